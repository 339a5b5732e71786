"""Who the caller is (`GET /me`) and what operators see and do over HTTP (`/ops/...`): the
cluster snapshot `longrun status` prints, every user's runs, dead letters (retry, drop) and the
kill switch (pause, resume). The console's Operations view is made of these.

An operator is the holder of a key made with `longrun keys create --operator`. Anyone else
gets a 403 `operator_only` from every `/ops` route: unlike another user's run (a 404, so that
run ids leak nothing), that these routes exist is no secret. JWT callers are never operators.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from api.auth import Principal, authenticate, security
from api.errors import ERROR_RESPONSES, ApiError
from api.links import public_base
from api.runs import Filter, RunIdPath, _state, events_url_at, next_cursor, parse_run_id
from shared.deadletters import dead_letters as read_dead_letters
from shared.deadletters import listing, retry, select
from shared.errors import NotFound, Unavailable
from shared.metrics import as_dict, cluster_redis
from shared.models import Run
from shared.redis.admission import AdmissionIO
from shared.redis.client import REDIS_DOWN
from shared.redis.ops import OpsIO

router = APIRouter(responses=ERROR_RESPONSES)
OPERATOR_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "operator_only: the key is not an operator's"}
}
DEFAULT_REASON = "paused by an operator"


class Me(BaseModel):
    user: str
    operator: bool
    key_id: str | None


class PauseRequest(BaseModel):
    reason: str = Field(DEFAULT_REASON, min_length=1, max_length=500)


async def operator(request: Request) -> Principal:
    who = await authenticate(request)
    if not who.operator:
        raise ApiError(
            403, "operator_only", "this needs an operator's key (keys create --operator)"
        )
    return who


Operator = Annotated[Principal, Depends(operator)]


def _ops(request: Request) -> OpsIO:
    state = _state(request)
    return OpsIO(state.redis, state.keys)  # the process's client: not closed here


def _with_owner(run: Run) -> dict[str, Any]:
    return {**run.public(), "user_id": run.user_id}


@router.get("/me", response_model=Me)
async def me(request: Request) -> Me:
    """The caller: its user, whether its key is an operator's, the key's public id."""
    who = await authenticate(request)
    return Me(user=who.user, operator=who.operator, key_id=who.key_id)


@router.get("/ops/status", responses=OPERATOR_ONLY)
async def status(request: Request, _: Operator) -> dict[str, Any]:
    """`longrun status --json`, plus the kill switch and the runs ended so far by status
    (counters: a chart's throughput is their difference between two reads)."""
    state = _state(request)
    try:
        figures = await cluster_redis(_ops(request), state.settings)
        paused = await AdmissionIO(state.redis, state.keys).paused_reason()
    except REDIS_DOWN as exc:
        raise Unavailable("redis is unavailable") from exc
    runs = await state.store.ops.run_figures()
    return {
        **as_dict(figures, state.settings),
        "paused": paused,
        "runs_active": runs.active,
        "runs_finished": runs.finished,
    }


@router.get("/ops/runs", responses=OPERATOR_ONLY)
async def all_runs(
    request: Request,
    _: Operator,
    page: Filter,
    user: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> dict[str, Any]:
    """Every user's runs, newest first, each with its `user_id`; paged like `GET /runs`."""
    runs = await _state(request).store.runs.list_runs(None, owner=user, **vars(page))
    return {"runs": [_with_owner(r) for r in runs], "next_cursor": next_cursor(runs, page.limit)}


@router.get("/ops/runs/{run_id}", responses=OPERATOR_ONLY)
async def any_run(run_id: RunIdPath, request: Request, _: Operator) -> dict[str, Any]:
    """Any user's run, with its `user_id`."""
    run = await _state(request).store.runs.any_run(parse_run_id(run_id))
    if run is None:
        raise NotFound("no such run")
    return _with_owner(run)


@router.get("/ops/runs/{run_id}/events_url", responses=OPERATOR_ONLY)
async def any_events_url(run_id: RunIdPath, request: Request, who: Operator) -> dict[str, Any]:
    """An `events_url` for any user's run: its token names the run's owner (the stream is the
    owner's, and holds one of the owner's stream slots) and the operator's key (revoking that
    key ends the stream, as for any token it minted)."""
    run = await _state(request).store.runs.any_run(parse_run_id(run_id))
    if run is None:
        raise NotFound("no such run")
    sec = security(request)
    as_owner = replace(who, user=run.user_id)
    url, expires_at = events_url_at(
        public_base(request.scope, sec.settings), sec, run.run_id, as_owner
    )
    return {"run_id": run.run_id, "events_url": url, "expires_at": expires_at}


@router.get("/ops/dlq", responses=OPERATOR_ONLY)
async def dead_letters(request: Request, _: Operator) -> dict[str, Any]:
    """Dead letters, oldest first, with their runs' statuses (`longrun dlq list --json`)."""
    try:
        rows = await listing(_state(request).store, _ops(request))
    except REDIS_DOWN as exc:
        raise Unavailable("redis is unavailable") from exc
    return {"dead_letters": rows}


@router.post("/ops/dlq/{letter}/{action}", responses=OPERATOR_ONLY)
async def act_on_dead_letter(
    letter: Annotated[str, Path(min_length=1, max_length=64)],
    action: Literal["retry", "drop"],
    request: Request,
    _: Operator,
) -> dict[str, Any]:
    """`retry` (re-run the failed run) or `drop` (forget the letter; the run stays failed) one
    dead letter, named by its entry id or its run id (`longrun dlq retry|drop ID`)."""
    state = _state(request)
    ops = _ops(request)
    try:
        chosen = select(await read_dead_letters(ops), [letter.lower()], everything=False)
        if not chosen:
            raise NotFound("no such dead letter")
        if action == "drop":
            await ops.drop_dead_letters([d.entry_id for d in chosen])
            return {"dead_letter": letter, "result": "dropped"}
        results = [await retry(state.store, state.rio, ops, d) for d in chosen]
    except REDIS_DOWN as exc:
        raise Unavailable("redis is unavailable") from exc
    return {"dead_letter": letter, "result": results[0]}


@router.post("/ops/pause", responses=OPERATOR_ONLY)
async def pause(
    request: Request, _: Operator, body: Annotated[PauseRequest | None, Body()] = None
) -> dict[str, Any]:
    """The kill switch (`longrun pause`): every submit is a 503 `paused` until resumed."""
    reason = body.reason if body is not None else DEFAULT_REASON
    await _switch(request, reason)
    return {"paused": reason}


@router.post("/ops/resume", responses=OPERATOR_ONLY)
async def resume(request: Request, _: Operator) -> dict[str, Any]:
    """Accept submits again (`longrun resume`)."""
    await _switch(request, None)
    return {"paused": None}


async def _switch(request: Request, reason: str | None) -> None:
    state = _state(request)
    try:
        await AdmissionIO(state.redis, state.keys).set_paused(reason)
    except REDIS_DOWN as exc:
        raise Unavailable("redis is unavailable: the switch did not move") from exc
