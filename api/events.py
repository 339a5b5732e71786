"""The resumable event stream of a run, `GET /runs/{id}/events` (SSE).

It authenticates by the bearer key or by the `token` of an `events_url` (a browser's
`EventSource` cannot send headers). An expired token's way back: the page asks its backend for
`GET /runs/{id}/events_url` (API key) and opens a new `EventSource` on the fresh URL with the
last event id as `last_event_id`. To let the page notice, a client that accepts
`text/event-stream` gets, instead of a 401 (on which EventSource gives up without saying why),
a 200 stream holding one id-less `stream_token_expired` event with a long `retry`.

Each open stream holds one of its user's SSE slots (`api.admission`), refreshed while it
lives and given back however it ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import orjson
import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import tokens
from api.admission import SLOT_TTL
from api.auth import current_user, security
from api.errors import ERROR_RESPONSES, ApiError
from api.runs import _owned_run, _state, parse_run_id
from api.state import AppState
from api.streams import RunStream
from shared.models import Run, parse_event_id
from shared.redisio import REDIS_DOWN

router = APIRouter(responses=ERROR_RESPONSES)
log = structlog.get_logger("longrun.api.events")
TOKEN_EXPIRED_RETRY_MS = 24 * 3600 * 1000


async def _already_ended(state: AppState, run: Run, after: int) -> bool:
    """Whether the client has seen the terminal event. Postgres knows once the terminal state
    is committed; just before that, only the Redis stream has the terminal event."""
    if run.status.terminal:
        return after >= run.last_seq
    try:
        seen = await state.rio.events_after(run.run_id, after - 1, 1) if after > 0 else []
    except REDIS_DOWN:
        return False
    return bool(seen) and seen[0].seq == after and seen[0].terminal


def _token_expired_stream(run_id: str) -> Response:
    """What an EventSource gets for an expired token: one id-less event it can listen for,
    and a long retry so that a page that ignores it does not hammer the server."""
    data = orjson.dumps(
        {
            "error": tokens.TokenProblem.EXPIRED.value,
            "detail": "the stream token expired: fetch a fresh events_url",
            "refresh": f"/runs/{run_id}/events_url",
        }
    ).decode()

    async def one() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(
            data=data, event=tokens.TokenProblem.EXPIRED.value, retry=TOKEN_EXPIRED_RETRY_MS
        )

    return EventSourceResponse(one(), headers={"Cache-Control": "no-store"})


async def _stream_user(request: Request, run_id: str, token: str | None) -> str | Response:
    """The user a stream is for: the token's (it names this run) or the bearer key's."""
    if token is None:
        return await current_user(request)
    try:
        grant = tokens.verify(security(request).stream_secret, token, run_id, time.time())
    except tokens.TokenRefused as exc:
        log.info("stream_token_refused", problem=exc.problem.value, run_id=run_id)
        if exc.problem is tokens.TokenProblem.EXPIRED:
            if "text/event-stream" in request.headers.get("accept", ""):
                return _token_expired_stream(run_id)
            raise ApiError(401, exc.problem.value, "the stream token expired") from None
        raise ApiError(401, exc.problem.value, "invalid stream token for this run") from None
    return grant.user_id


class HeldStream(EventSourceResponse):
    """An SSE response that gives its per-user slot back however it ends (finished, client
    gone, server shutting down), shielded from the cancellation that ends it."""

    def __init__(self, *args: Any, release: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._release()


@router.get(
    "/runs/{run_id}/events",
    response_model=None,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the run's events"},
        204: {"description": "the client has seen the terminal event already"},
    },
)
async def events(
    run_id: str,
    request: Request,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
    token: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    state, sec = _state(request), security(request)
    rid = parse_run_id(run_id)
    user = await _stream_user(request, rid, token)
    if isinstance(user, Response):
        return user
    run = await _owned_run(state, rid, user)
    try:
        after = parse_event_id(last_event_id_header or last_event_id)
    except ValueError as exc:
        raise ApiError(400, "invalid_last_event_id", str(exc)) from None
    if after is not None and await _already_ended(state, run, after):
        return Response(status_code=204)  # tells EventSource to stop reconnecting
    slot = await sec.admission.take_sse_slot(user)
    if slot is None:
        raise ApiError(
            429,
            "too_many_streams",
            f"at most {state.settings.max_sse_per_user} open event streams per user",
            {"Retry-After": "5"},
        )
    stream = RunStream(
        state.store, state.rio, state.hub, run.run_id, state.settings.sse_ping_seconds
    )
    refresh_every = SLOT_TTL / 3

    async def frames() -> AsyncIterator[bytes]:
        refreshed = time.monotonic()
        async for event in stream.events(after or 0, run.status.terminal):
            if time.monotonic() - refreshed > refresh_every:
                await sec.admission.refresh_sse_slot(user, slot)
                refreshed = time.monotonic()
            if event is None:
                continue  # idle: sse-starlette's own pings keep the connection alive
            yield event.frame  # encoded once per event, shared by every subscriber

    async def release() -> None:
        await sec.admission.release_sse_slot(user, slot)

    return HeldStream(
        frames(),
        release=release,
        ping=state.settings.sse_ping_seconds,
        send_timeout=30,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
