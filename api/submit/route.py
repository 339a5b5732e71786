"""`POST /runs` as a FastAPI route: the adapter for every request the lane (`api.submit.lane`)
hands on, and the operation the OpenAPI schema documents. FastAPI parses the body, the
credentials (`submit_principal`: 401s) and the Idempotency-Key header, with its own 400/422
answers for a body `SubmitRun` refuses; the pipeline does the rest and the renderer answers.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from api.auth import Principal, current_user, security, submit_principal
from api.errors import ERROR_RESPONSES, PRIORITY_REFUSED
from api.schemas import SubmitAnswer, documented
from api.state import AppState
from api.submit import pipeline
from api.submit.render import render, response
from api.submit.request import SubmitRun

router = APIRouter(responses=ERROR_RESPONSES)


@router.post(
    "/runs",
    status_code=202,
    response_model=None,
    responses={
        **documented(202, SubmitAnswer, "accepted (or an idempotent replay)"),
        **PRIORITY_REFUSED,
    },
)
async def submit(
    body: SubmitRun,
    request: Request,
    who: Annotated[Principal, Depends(submit_principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    # (no docstring: it would become the operation's description in the OpenAPI schema)
    state: AppState = request.app.state.longrun
    sec = security(request)
    authenticate = partial(current_user, request)
    outcome = await pipeline.submit(state, sec, body, who, idempotency_key, authenticate)
    return response(render(outcome, request.scope, sec))
