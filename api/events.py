"""The resumable event stream of a run, `GET /runs/{id}/events` (SSE).

It authenticates by the bearer key or by the `token` of an `events_url` (a browser's
`EventSource` cannot send headers). An expired token's way back: the page asks its backend for
`GET /runs/{id}/events_url` (API key) and opens a new `EventSource` on the fresh URL with the
last event id as `last_event_id`. To let the page notice, a client that accepts
`text/event-stream` gets, instead of a 401 (on which EventSource gives up without saying why),
a 200 stream holding one id-less `stream_token_expired` event with a long `retry`.

Each open stream holds one of its user's SSE slots (`api.admission`), refreshed while it
lives and given back however it ends. A stream opened with an API key (in the header, or by a
token it minted) ends, with a comment, once that key is revoked (`api.revocation`); a token
whose key is revoked is a 401 `stream_token_revoked`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import subscription as subscription_module
from api import tokens
from api.auth import Principal, Security, authenticate, key_id_checked, security
from api.errors import ERROR_RESPONSES, ApiError
from api.middleware import ABORT, OUTER_SEND
from api.revocation import Held, KeyGuard
from api.runs import RunIdPath, _owned_run, _state, parse_run_id
from api.schemas import EVENT_ID, EVENT_ID_PATTERN
from api.state import AppState
from api.streams import Hole, RunStream
from shared.models import Event, Run, parse_event_id
from shared.redis.client import REDIS_DOWN

router = APIRouter(responses=ERROR_RESPONSES)
log = structlog.get_logger("longrun.api.events")
TOKEN_EXPIRED_RETRY_MS = 24 * 3600 * 1000
# Called once when an event stream's response ends, however it ends, with whether the client
# left (`http.disconnect`) before the run's terminal event was sent.
OnEnd = Callable[[bool], Awaitable[None]]


async def _already_ended(state: AppState, run: Run, after: int) -> bool:
    """Whether the client has seen the terminal event. Postgres knows once the terminal state
    is committed; just before that, only the Redis stream has the terminal event."""
    if run.status.terminal:
        return after >= run.last_seq
    try:
        seen = await state.hub.events_after(run.run_id, after - 1, 1) if after > 0 else []
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


async def _stream_user(request: Request, run_id: str, token: str | None) -> Principal | Response:
    """Who a stream is for: the token's (it names this run, and the key that minted it must
    still be active) or the bearer's."""
    if token is None:
        return await authenticate(request)
    sec = security(request)
    try:
        grant = tokens.verify(sec.stream_secret, token, run_id, time.time())
    except tokens.TokenRefused as exc:
        log.info("stream_token_refused", problem=exc.problem.value, run_id=run_id)
        if exc.problem is tokens.TokenProblem.EXPIRED:
            if "text/event-stream" in request.headers.get("accept", ""):
                return _token_expired_stream(run_id)
            raise ApiError(401, exc.problem.value, "the stream token expired") from None
        raise ApiError(401, exc.problem.value, "invalid stream token for this run") from None
    if grant.key_id is None:  # minted by a JWT caller
        return Principal(grant.user_id, None)
    checked = await key_id_checked(request, sec, grant.key_id)
    return Principal(grant.user_id, None, grant.key_id, checked)


PING = b": ping\r\n\r\n"
REVOKED = b": the API key of this stream was revoked\r\n\r\n"
# Sent (without an id) when a stream cannot go on: the next event is in neither Redis nor the
# archive. A browser's EventSource reconnects after `retry`; the run itself is not affected.
HOLE_FRAME = (
    b"retry: 10000\r\nevent: stream_error\r\ndata: "
    + orjson.dumps(
        {"error": "events_unavailable", "detail": "the next event of this run is unavailable"}
    )
    + b"\r\n\r\n"
)
SEND_BYTES = 64 * 1024
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


def _bodies(batch: list[Event] | None) -> Iterator[bytes]:
    """The bodies to send for a batch: the frames joined, at most about SEND_BYTES per send, so
    that a client that stops reading holds at most that much in the server's write buffer (a
    send waits while the buffer is above its high-water mark) besides its hub buffer."""
    if batch is None:
        yield PING
        return
    if len(batch) == 1:
        yield batch[0].frame
        return
    part: list[bytes] = []
    size = 0
    for e in batch:
        part.append(e.frame)
        size += len(e.frame)
        if size >= SEND_BYTES:
            yield b"".join(part)
            part, size = [], 0
    if part:
        yield b"".join(part)


class SendStalled(Exception):
    """The client stopped reading: a send stayed blocked for `subscription.SEND_TIMEOUT` seconds."""


class EventStream(Response):
    """The SSE response of a run's stream: a lean ASGI app of our own instead of
    sse-starlette's, whose per-send cancel scope, lock and task group cost more CPU than the
    rest of the delivery (py-spy, 2,000 subscribers at 10k events/s: 74% of the API's samples
    under its send path, anyio's `current_task`/`move_on_after` alone ~20%).

    One ASGI send per batch of ready events, their frames (encoded once per event, shared by
    every subscriber) joined, sent past the middlewares that only touch a response's start or
    end (`api.middleware.OUTER_SEND`). A keep-alive comment after `idle_seconds` without an event. A
    task waiting on `receive` notices the client leaving. Stopped (client gone, server shutting
    down), it ends without finishing the body, so `ReconnectHint` appends the reconnect hint.
    A send blocked for `SEND_TIMEOUT` (a client that stopped reading) raises `SendStalled`,
    which makes the server close the connection. The per-user slot is a lease of the hub's:
    refreshed with every other stream's by one task, and given back however the stream ends
    (queued, so a burst of streams ending costs no burst of Redis calls). With a `guard`, the
    stream is stopped when its API key is revoked, and ends with the REVOKED comment. Extra
    `headers` follow the SSE ones; `on_end` runs once, however the response ends, told whether
    the client left first (`api.submit.stream` cancels its run there)."""

    def __init__(
        self,
        stream: RunStream,
        after: int,
        terminal_known: bool,
        refresh: Callable[[], Awaitable[None]],
        release: Callable[[], Awaitable[None]],
        guard: KeyGuard | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
        on_end: OnEnd | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.stream = stream
        self.after = after
        self.terminal_known = terminal_known
        self.release = release
        self.refresh = refresh
        self.guard = guard
        self.held: Held | None = None
        self.start_headers = [*_SSE_HEADERS, *headers]
        self.on_end = on_end
        self.client_left = False  # the server got `http.disconnect`

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        ended = False
        try:
            ended = await self._serve(scope, receive, send)
        finally:
            if self.on_end is not None:
                await self.on_end(self.client_left and not ended)

    async def _serve(self, scope: Any, receive: Any, send: Any) -> bool:
        """The response; True when it ended with the run (terminal event sent)."""
        lease = self.stream.hub.hold(self.refresh, self.release)
        ended = False
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.start_headers}
            )
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return False
            # Body frames skip the middlewares below RequestId (see OUTER_SEND); the end of the
            # body goes through all of them, so ReconnectHint sees whether the stream finished.
            try:
                ended = await self._pump(receive, scope.get(OUTER_SEND, send))
            except SendStalled:
                # Normal for a phone gone to sleep: one info line, and the connection dropped
                # here (the protocol's ABORT) rather than an error with a traceback.
                log.info(
                    "stream_client_stopped_reading",
                    run_id=self.stream.run_id,
                    stalled_seconds=subscription_module.SEND_TIMEOUT,
                )
                abort = scope.get(ABORT)
                if abort is None:  # a server without the hook: it closes on the exception
                    raise
                abort()
                return False
            if ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif self.held is not None and self.held.revoked:
                await send({"type": "http.response.body", "body": REVOKED, "more_body": False})
            return ended
        finally:
            self.stream.hub.let_go(lease)

    async def _pump(self, receive: Any, send: Any) -> bool:
        """Sends the stream; True when it ended with the run (terminal event sent)."""
        stream = self.stream
        task = asyncio.current_task()
        subscribed = await stream.subscribe(self.after)
        if self.guard is not None:
            self.held = self.guard.hold(subscribed.stop)
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        gen = stream.batches(self.after, self.terminal_known)
        try:
            try:
                async for batch in gen:
                    sub = stream.sub
                    assert sub is not None
                    sub.task = task
                    sub.sending_since = sub.active_at
                    for body in _bodies(batch):
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    sub.sending_since = 0.0
            except Hole as hole:
                log.error("stream_hole", run_id=stream.run_id, seq=hole.seq)
                await send({"type": "http.response.body", "body": HOLE_FRAME, "more_body": True})
                return True
            sub = stream.sub
            return sub is None or not sub.stopped
        except asyncio.CancelledError:
            sub = stream.sub
            if sub is not None and sub.stalled and task is not None and task.uncancel() == 0:
                raise SendStalled() from None
            raise
        finally:
            if self.held is not None and self.guard is not None:
                self.guard.let_go(self.held)
            watcher.cancel()
            await gen.aclose()
            if stream.sub is not None:
                stream.hub.unsubscribe(stream.sub)  # idempotent; covers a never-started gen

    async def _watch_disconnect(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_left = True
        sub = self.stream.sub
        if sub is not None:
            sub.stop()


@router.get(
    "/runs/{run_id}/events",
    response_model=None,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the run's events"},
        204: {"description": "the client has seen the terminal event already"},
    },
)
async def events(
    run_id: RunIdPath,
    request: Request,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", json_schema_extra={"pattern": EVENT_ID_PATTERN})
    ] = None,
    last_event_id: Annotated[
        str | None, Query(json_schema_extra={"pattern": EVENT_ID_PATTERN})
    ] = None,
    token: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    state, sec = _state(request), security(request)
    rid = parse_run_id(run_id)
    who = await _stream_user(request, rid, token)
    if isinstance(who, Response):
        return who
    user = who.user
    run = await _owned_run(state, rid, user)
    raw_after = last_event_id_header or last_event_id
    try:
        if raw_after is not None and not EVENT_ID.fullmatch(raw_after):
            raise ValueError("Last-Event-ID must be an event id previously sent by this stream")
        after = parse_event_id(raw_after)
    except ValueError as exc:
        raise ApiError(400, "invalid_last_event_id", str(exc)) from None
    if after is not None and await _already_ended(state, run, after):
        return Response(status_code=204)  # tells EventSource to stop reconnecting
    slot = await sec.admission.stream_slot(user)
    return run_event_stream(
        state,
        sec,
        who,
        slot,
        run.run_id,
        after=after or 0,
        terminal_known=run.status.terminal,
        archived_seq=run.last_seq,
    )


def run_event_stream(
    state: AppState,
    sec: Security,
    who: Principal,
    slot: str,
    run_id: str,
    *,
    after: int = 0,
    terminal_known: bool = False,
    archived_seq: int = 0,
    headers: Sequence[tuple[bytes, bytes]] = (),
    on_end: OnEnd | None = None,
) -> EventStream:
    """The SSE answer of a run's events after `after`, holding `slot` (given back however it
    ends): the one way a run's events are served, by `GET /runs/{id}/events` and by
    `POST /runs/stream` (`api.submit.stream`) alike, so both send the same ids and frames."""
    user = who.user
    stream = RunStream(
        state.store, state.hub, run_id, state.settings.sse_ping_seconds, archived_seq
    )

    async def refresh() -> None:
        await sec.admission.refresh_sse_slot(user, slot)

    async def release() -> None:
        await sec.admission.release_sse_slot(user, slot)

    guard = None if who.key_id is None else KeyGuard(sec.revocations, who.key_id, who.checked)
    return EventStream(
        stream, after, terminal_known, refresh, release, guard, headers=headers, on_end=on_end
    )
