"""`POST /runs/stream`: submit a run and answer with its event stream, in one response. The
queue still runs it (a worker, the event log, the hub): one execution path, the same events as
`GET /runs/{id}/events`, and a client that chose `continue` resumes there after a drop.

    body: SubmitStream (a submit + on_disconnect; FastAPI's 400/422)
      ─> the process's cap (`StreamGate`) ───────────── 503 streams_full + Retry-After
      ─> pipeline.submit, as POST /runs (validation, Idempotency-Key, admission, threads),
         with one of the user's SSE slots (in the admission's round trip) ─ 429 too_many_streams
           ├─ Refused ─> render: POST /runs's answer, byte for byte; the slot given back
           └─ Accepted ─> api.events.run_event_stream from seq 1 (a replayed key: the same
                          run), `Content-Location: /runs/{id}`
      the client leaves (ASGI `http.disconnect`) before the terminal event:
           on_disconnect=cancel ─> api.runs.cancel_run, the one cancel path

Every refusal comes before anything is written, and gives back what it took. The lane
(`api.submit.lane`) answers the common request (plain JSON, a cached credential) through
`answer`, past FastAPI's layers; the route answers the rest. The run id also rides in the
`start` event (the worker writes it), for a client reading the stream alone. A stream the
server ends (shutdown, a revoked key) or one whose client stopped reading is not a
disconnect: its run goes on.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from api.admission import new_slot
from api.auth import Principal, Security, current_user, security, submit_principal
from api.errors import ERROR_RESPONSES, PRIORITY_REFUSED, ApiError
from api.events import EventStream, run_event_stream
from api.links import location, public_base, run_url
from api.runs import cancel_run
from api.state import AppState, StreamGate
from api.submit import pipeline
from api.submit.render import render, response
from api.submit.request import SubmitStream
from shared.errors import LongrunError
from shared.redis.client import REDIS_ERRORS
from shared.store import PG_DOWN

router = APIRouter(responses=ERROR_RESPONSES)
log = structlog.get_logger("longrun.api.stream")

STREAMS_FULL_RETRY_AFTER = 1
CANCEL_FAILURES: tuple[type[BaseException], ...] = (LongrunError, *REDIS_ERRORS, *PG_DOWN)

STREAM_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "the run's events from seq 1, as GET /runs/{id}/events sends them",
        "headers": {
            "Content-Location": {
                "description": "the run: /runs/{id}",
                "schema": {"type": "string"},
            }
        },
    },
    **PRIORITY_REFUSED,
}


@router.post("/runs/stream", response_model=None, responses=STREAM_RESPONSES)
async def submit_and_stream(
    body: SubmitStream,
    request: Request,
    who: Annotated[Principal, Depends(submit_principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    # (no docstring: it would become the operation's description in the OpenAPI schema)
    return await answer(
        request.app.state.longrun, security(request), request, body, who, idempotency_key
    )


async def answer(
    state: AppState,
    sec: Security,
    request: Request,
    body: SubmitStream,
    who: Principal,
    idempotency_key: str | None,
) -> Response:
    """The route's answer, for the route and the lane (`api.submit.lane`) alike: its event
    stream, or a refusal's answer; 503 `streams_full` (raised) past the process's cap."""
    gate = state.streams
    if not gate.enter():
        raise ApiError(
            503,
            "streams_full",
            f"this API process serves at most {gate.cap} submit-and-stream answers at once",
            {"Retry-After": str(STREAMS_FULL_RETRY_AFTER)},
        )
    opened: Response | None = None
    try:
        opened = await _open(state, sec, request, body, who, idempotency_key)
    finally:
        if not isinstance(opened, EventStream):
            gate.leave()  # an event stream leaves when it ends (`_on_end`)
    return opened


async def _open(
    state: AppState,
    sec: Security,
    request: Request,
    body: SubmitStream,
    who: Principal,
    idempotency_key: str | None,
) -> Response:
    """The submit's answer: its event stream, or the refusal POST /runs would give."""
    slot = new_slot()  # taken by the pipeline, with the submit's admission
    outcome: pipeline.Outcome | None = None
    try:
        authenticate = partial(current_user, request)
        outcome = await pipeline.submit(
            state, sec, body.submit(), who, idempotency_key, authenticate, slot
        )
    finally:
        if not isinstance(outcome, pipeline.Accepted):
            await sec.admission.release_sse_slot(who.user, slot)
    if not isinstance(outcome, pipeline.Accepted):
        return response(render(outcome, request.scope, sec))
    run = outcome.run
    terminal_known, archived_seq = False, 0
    if run.replayed:  # the key's run may be under way, or over: serve it from where it is
        known = await state.store.runs.get_run(run.run_id, who.user)
        if known is not None:
            terminal_known, archived_seq = known.status.terminal, known.last_seq
    path = location(run_url(public_base(request.scope, sec.settings), run.run_id))
    headers = [(b"content-location", path.encode("latin-1"))]
    if run.replayed:
        headers.append((b"idempotent-replayed", b"true"))
    cancel = body.on_disconnect == "cancel"
    return run_event_stream(
        state,
        sec,
        who,
        slot,
        run.run_id,
        terminal_known=terminal_known,
        archived_seq=archived_seq,
        headers=headers,
        on_end=partial(_on_end, state, state.streams, run.run_id, who.user, cancel),
    )


async def _on_end(
    state: AppState, gate: StreamGate, run_id: str, user: str, cancel: bool, client_left: bool
) -> None:
    """A stream's end: its place under the cap given back, and its run cancelled when the
    client left first and asked for that."""
    try:
        if client_left and cancel:
            await _cancel(state, run_id, user)
    finally:
        gate.leave()


async def _cancel(state: AppState, run_id: str, user: str) -> None:
    try:
        status = await cancel_run(state, run_id, user)
    except CANCEL_FAILURES as exc:
        if getattr(exc, "code", None) != "already_finished":  # else: it ended as the client left
            # Postgres or Redis away: the run goes on, as after a cancel answered 503.
            log.warning("stream_cancel_failed", run_id=run_id, error=type(exc).__name__)
        return
    log.info("stream_client_left", run_id=run_id, status=status)
