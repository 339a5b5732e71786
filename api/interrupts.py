"""`POST /runs/{id}/resume`: a person answers a waiting run's interrupt.

The answer is committed first (the interrupt closed with its value, the run queued, in one
transaction that locks the run's row), then the run gets a queue entry; if Redis refuses the
entry the reconciler adds it (a queued run without one). A retried resume with the same value
gets the same answer and queues nothing; any other resume of a closed interrupt, or of an
interrupt the run does not have, is a 409. Another user's run is a 404, like everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import current_user
from api.errors import ERROR_RESPONSES, ErrorBody, JSONResp
from api.runs import RunIdPath, parse_run_id
from api.schemas import documented
from api.state import AppState
from api.submit.request import check_json_field
from shared.redis.client import REDIS_ERRORS

log = structlog.get_logger("longrun.api")

router = APIRouter(responses=ERROR_RESPONSES)

INTERRUPT_ID_PATTERN = r"^[0-9a-f]{32}$"


class ResumeRun(BaseModel):
    """The body of a resume: which interrupt it answers, and the answer (any JSON value)."""

    model_config = ConfigDict(extra="forbid")

    interrupt_id: str = Field(pattern=INTERRUPT_ID_PATTERN)
    value: Any = Field(json_schema_extra={"description": "the answer: any JSON value"})


class ResumeAnswer(BaseModel):
    run_id: str
    interrupt_id: str
    status: str


@router.post(
    "/runs/{run_id}/resume",
    status_code=202,
    response_model=None,
    responses={
        **documented(202, ResumeAnswer, "the interrupt answered: the run is queued again"),
        409: {
            "model": ErrorBody,
            "description": "interrupt_mismatch (not this run's interrupt), interrupt_answered "
            "(closed already with another value, or by its deadline), not_waiting (cancelled)",
        },
    },
)
async def resume(
    run_id: RunIdPath,
    body: ResumeRun,
    request: Request,
    user: Annotated[str, Depends(current_user)],
) -> JSONResp:
    state: AppState = request.app.state.longrun
    rid = parse_run_id(run_id)
    s = state.settings
    check_json_field("value", body.value, s.max_json_depth, s.max_interrupt_bytes)
    done = await state.store.interrupts.resume(rid, user, body.interrupt_id, body.value)
    if not done.replayed:
        try:
            for item in await state.store.runs.queue_items([rid]):
                await state.rio.enqueue(item)
        except REDIS_ERRORS as exc:  # committed: the reconciler gives it an entry
            log.warning("resume_enqueue_failed", run_id=rid, error=type(exc).__name__)
    headers = {"Idempotent-Replayed": "true"} if done.replayed else None
    return JSONResp(
        {"run_id": rid, "interrupt_id": body.interrupt_id, "status": "queued"},
        status_code=202,
        headers=headers,
    )
