"""The common `POST /runs` without FastAPI's per-request machinery.

Why: in `bench.submit`, FastAPI's routing, dependency solving and exception layers cost more CPU
per submit than the whole grouped commit (`api.submit_batch`) does. Driving the app in-process,
a submit took ~330 us of CPU with about two thirds of it in those layers (see bench/RESULTS.md).

What this lane takes: a JSON body that `SubmitRun` accepts, no Idempotency-Key, no thread, a
bearer token known without I/O (a JWT, or an API key whose look-up is cached: the group confirms
its epoch), and parameters `validate_submit` accepts. Anything else, and every request the lane
cannot answer 202 or with a refusal of the group itself (rate limit, pause, backlog, Redis or
Postgres away), goes on to the FastAPI route with its body replayed, so errors, idempotency,
threads, first-time key look-ups and the in-flight cap's locked path have one implementation.
The route also stays the one in the OpenAPI schema. The answers are the route's, byte for byte:
the lane builds them with the same functions.

It sits inside the request-id, body-limit and metrics middlewares, so those still apply.
"""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Security, cached_principal
from api.errors import ApiError, error_response
from api.middleware import scope_request_id
from api.runs import SubmitRun, accepted, validate_submit
from api.state import AppState
from api.submit_batch import Fallback, NeedsLock, StaleKey, Ticket
from shared.errors import Unavailable
from shared.store import NewRun

log = structlog.get_logger("longrun.api.submit")

_JSON = (b"application/json", b"application/json; charset=utf-8")


class SubmitLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/runs":
            await self.app(scope, receive, send)
            return
        token = None
        plain = True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
            elif name == b"idempotency-key" or (
                name == b"content-type" and value.lower() not in _JSON
            ):
                plain = False
        if token is None or not plain:
            await self.app(scope, receive, send)
            return
        raw, complete = await _read_body(receive)
        replay = _replaying(raw, complete, receive)
        if complete:
            answered = await self._answer(scope, token, raw, send)
            if answered:
                return
        await self.app(scope, replay, send)

    async def _answer(self, scope: Scope, token: bytes, raw: bytes, send: Send) -> bool:
        """Answer from the lane when it can; False leaves the request to the route."""
        app = scope["app"]
        state: AppState = app.state.longrun
        sec: Security = app.state.security
        if state.submits is None:
            return False
        try:
            who = cached_principal(sec, token.decode("ascii"))
        except UnicodeDecodeError:
            return False
        if who is None:
            return False
        try:
            body = SubmitRun.model_validate_json(raw)
        except ValidationError:
            return False
        if body.thread_id is not None:
            return False
        request = Request(scope)
        try:
            agent = validate_submit(state, body)
        except ApiError:
            return False
        new = NewRun(
            user_id=who.user,
            agent=agent,
            input=body.input,
            params=body.params,
            metadata=body.metadata,
        )
        try:
            sub = await state.submits.submit(Ticket(new, who.epoch))
        except (StaleKey, NeedsLock, Fallback):
            return False
        except ApiError as exc:
            response = error_response(
                exc.status, exc.code, exc.detail, exc.headers, scope_request_id(scope)
            )
        except Unavailable as exc:
            response = error_response(
                503,
                exc.code,
                exc.detail,
                {"Retry-After": str(exc.retry_after)},
                scope_request_id(scope),
            )
        else:
            response = accepted(request, who.user, agent, sub)
        await response(scope, _no_receive, send)
        return True


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, and whether it was read whole (False: a disconnect or an odd message,
    which the route then sees)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replaying(raw: bytes, complete: bool, receive: Receive) -> Receive:
    """`receive` as the route must see it: the body read so far first, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": not complete}
        return await receive()

    return replay


async def _no_receive() -> dict[str, Any]:  # a complete answer never reads the request again
    return {"type": "http.disconnect"}
