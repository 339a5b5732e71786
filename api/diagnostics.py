"""`GET /runs/{id}/diagnostics`: what an operator needs when a run looks stuck. Owner only
(another user's run is the same 404 as a random id)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from api.auth import current_user
from api.errors import ERROR_RESPONSES
from api.runs import RunIdPath, parse_run_id
from api.state import AppState
from shared.errors import NotFound, Unavailable
from shared.redis.client import REDIS_DOWN

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/runs/{run_id}/diagnostics")
async def diagnostics(
    run_id: RunIdPath, request: Request, user: str = Depends(current_user)
) -> Any:
    state: AppState = request.app.state.longrun
    run = await state.store.runs.get_run(parse_run_id(run_id), user)
    if run is None:
        raise NotFound("no such run")
    try:
        live = await state.rio.diagnostics(run.run_id)
    except REDIS_DOWN as exc:
        raise Unavailable("redis is unavailable") from exc
    checkpoint = await state.store.runs.last_checkpoint(run.run_id)
    beat = live.pop("owner_last_heartbeat", None)
    return {
        "run_id": run.run_id,
        "status": str(run.status),
        "attempt": run.attempt,
        "archived_seq": run.last_seq,
        "updated_at": run.updated_at.isoformat() if run.updated_at else None,
        "lease_seconds": state.settings.lease_seconds,
        **live,
        "owner_heartbeat_age_s": None if beat is None else round(time.time() - float(beat), 3),
        "last_checkpoint": None
        if checkpoint is None
        else {"step": checkpoint.step, "state_keys": sorted(checkpoint.state)[:20]},
    }
