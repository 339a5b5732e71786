"""Waiting for a run's end over plain HTTP, for clients that want the result rather than the
stream: `GET /runs/{id}/wait?timeout=S` and `POST /runs/wait?timeout=S` (submit as
`POST /runs` does, then wait the same way).

    the run (one Postgres read) ── ended? ──────────────────────────────────> 200 the run
        │ not yet
        ▼
    hub.until_end(run, last_seq) ─┬─ the run's channel announces its terminal event
    timer (S, capped by LONGRUN_MAX_WAIT_SECONDS) ─┤
    server shutting down ──────────┤
    client gone (http.disconnect) ─┴─> (the client left: nothing to answer)
        ▼
    the run (one Postgres read) ─> 200 when it ended, else 202 + Retry-After + Location

A waiter costs no Redis or Postgres call while it waits (`api.hub`): a future on the run's
watch, a timer, and a task that notices the client leaving. A 202 is the long poll's "not yet":
the run as it stands, `Location` (`/runs/{id}/wait`) to wait again, `Retry-After`. A bad
`timeout` (not a number, outside 0-300) is a 422 before anything is read or written.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response
from starlette.types import Receive

from api.auth import (
    Principal,
    authenticate,
    current_user,
    principal_of,
    security,
    submit_principal,
    unauthorized,
)
from api.errors import ERROR_RESPONSES, PRIORITY_REFUSED, JSONResp
from api.hub import settle
from api.links import location
from api.runs import RunIdPath, User, _owned_run, _state, run_links
from api.schemas import RunView, documented
from api.state import AppState
from api.submit import pipeline
from api.submit.render import render, response
from api.submit.request import SubmitRun
from shared.models import Run
from shared.redis.client import REDIS_DOWN

router = APIRouter(responses=ERROR_RESPONSES)

WAIT_DEFAULT = 30.0
WAIT_MAX = 300.0
RETRY_AFTER = "1"

Timeout = Annotated[
    float,
    Query(
        alias="timeout",
        ge=0,
        le=WAIT_MAX,
        description="seconds to wait for the run's end (0-300); a 202 when they pass first",
    ),
]

ANSWERS: dict[int | str, Any] = {
    **documented(200, RunView, "the run, ended (as GET /runs/{id} shows it)"),
    **documented(
        202, RunView, "the run as it stands, not ended: wait again at Location after Retry-After"
    ),
}


@router.get("/runs/{run_id}/wait", response_model=None, responses=ANSWERS)
async def wait_run(
    run_id: RunIdPath, request: Request, user: User, wait_s: Timeout = WAIT_DEFAULT
) -> Response:
    run = await _owned_run(_state(request), run_id, user)
    return await _waited(request, run, principal_of(request, user), wait_s)


@router.post("/runs/wait", response_model=None, responses={**ANSWERS, **PRIORITY_REFUSED})
async def submit_and_wait(
    body: SubmitRun,
    request: Request,
    who: Annotated[Principal, Depends(submit_principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    wait_s: Timeout = WAIT_DEFAULT,
) -> Response:
    state, sec = _state(request), security(request)
    authenticate = partial(current_user, request)
    outcome = await pipeline.submit(state, sec, body, who, idempotency_key, authenticate)
    if isinstance(outcome, pipeline.Refused):
        return response(render(outcome, request.scope, sec))
    run = await _owned_run(state, outcome.run.run_id, who.user)
    return await _waited(request, run, who, wait_s)


async def _waited(request: Request, run: Run, who: Principal, wait_s: float) -> Response:
    """The answer once the run ended, the time passed, the server began stopping, or the client
    left (then nothing is read: there is no one to answer)."""
    state = _state(request)
    if not run.status.terminal:
        seconds = min(wait_s, state.settings.max_wait_seconds)
        if not await _until_end(request.receive, state, run, seconds):
            return Response(status_code=202)
        await _still_allowed(request, state, who)
        rid, user = run.run_id, who.user
        run = await state.coalesced(("run", rid, user), lambda: _owned_run(state, rid, user))
    links = run_links(request.scope, security(request), run.run_id, who)
    body = {**run.public(), **links}
    if run.status.terminal:
        return JSONResp(body)
    headers = {"Retry-After": RETRY_AFTER, "Location": location(links["url"] + "/wait")}
    return JSONResp(body, status_code=202, headers=headers)


async def _still_allowed(request: Request, state: AppState, who: Principal) -> None:
    """The credentials again after a wait, so that a key revoked (a JWT expired) meanwhile gets
    a 401, not the run. The key epoch unchanged since the key was found active says no key was
    revoked since: one Redis read shared by every waiter answered at once. Otherwise (it moved,
    or Redis did not answer) the full check."""
    if who.key_id is None:  # a JWT: good until its exp
        if who.expires_at is not None and who.expires_at <= time.time():
            raise unauthorized("invalid or expired token")
        return
    known = who.checked or who.epoch
    admission = security(request).admission
    try:
        now = await state.coalesced("key_epoch", admission.key_epoch)
    except REDIS_DOWN:
        now = None
    if known is None or now is None or not hmac.compare_digest(known, now):
        await authenticate(request)


async def _until_end(receive: Receive, state: AppState, run: Run, seconds: float) -> bool:
    """Wait for the hub to read the run's terminal event, for `seconds`, or for the server to
    stop; False when the client left first."""
    end = await state.hub.until_end(run.run_id, run.last_seq)
    timer = asyncio.get_running_loop().call_later(seconds, settle, end, None)
    left = asyncio.ensure_future(_client_left(receive))
    left.add_done_callback(lambda _: settle(end, None))
    try:
        await end
        return not (left.done() and not left.cancelled())
    finally:
        timer.cancel()
        left.cancel()
        state.hub.forget(run.run_id, end)


async def _client_left(receive: Receive) -> None:
    """Returns when the client disconnects (a receive that fails counts as that)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: S110 (the server gave up on the connection: it is gone)
        pass
