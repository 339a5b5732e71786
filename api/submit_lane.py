"""The common `POST /runs` without FastAPI's per-request machinery.

Why: in `bench.submit`, FastAPI's routing, dependency solving and exception layers cost more CPU
per submit than the whole grouped commit (`api.submit_batch`) does. Driving the app in-process,
a submit took ~330 us of CPU with about two thirds of it in those layers (see bench/RESULTS.md).

What this lane takes: a JSON body that `SubmitRun` accepts, no thread, a
bearer token known without I/O (a JWT, or an API key whose look-up is cached: the group confirms
its epoch), and parameters `validate_submit` accepts. Anything else, and every request the lane
cannot answer 202 or with a refusal of the group itself (rate limit, pause, backlog, Redis or
Postgres away), goes on to the FastAPI route with its body replayed, so errors, idempotency,
threads, first-time key look-ups and the in-flight cap's locked path have one implementation.
The route also stays the one in the OpenAPI schema. The answers are the route's, byte for byte:
the lane builds them with the same functions.

It is the outermost of our middlewares, and does for its own answers what the inner ones do
for the route's: the request id (echoed header, `request_id` in error bodies), the body limit
(a body without a Content-Length within the limit goes to the route, where `BodyLimit`
applies) and the submit timer. Passing through four pure-ASGI layers cost ~40 us a submit.
"""

from __future__ import annotations

import time

import orjson
import structlog
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Principal, Security, cached_principal
from api.errors import ApiError
from api.links import location
from api.metrics import ApiMetrics
from api.middleware import request_id_from
from api.runs import SubmitRun, run_links, submit_digest, validate_submit
from api.state import AppState
from api.submit import IDEMPOTENCY_KEY_RE
from api.submit_batch import Fallback, NeedsLock, StaleKey, Ticket
from shared.errors import Unavailable
from shared.store import NewRun, Submitted

log = structlog.get_logger("longrun.api.submit")

_JSON = (b"application/json", b"application/json; charset=utf-8")
# Marks the lane leaves in the scope for the route (`api.runs.submit`).
GROUPED = "longrun.grouped"
ADMITTED = "longrun.admitted"


class SubmitLane:
    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ApiMetrics, cors: bool) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.cors = cors  # cross-origin requests then go through the CORS middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/runs":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        token = None
        key: bytes | None = None
        size = -1
        plain = True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
            elif name == b"content-length":
                size = int(value) if value.isdigit() else -1
            elif name == b"idempotency-key":
                key = value
            elif (name == b"content-type" and value.lower() not in _JSON) or (
                name == b"origin" and self.cors
            ):
                plain = False
        if token is None or not plain or not 0 <= size <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        raw, complete = await _read_body(receive)
        if complete:
            answer = await self._answer(scope, token, raw, key)
            if answer is not None:
                status, body, headers = answer
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                self.metrics.submit_seconds.labels(str(status)).observe(time.perf_counter() - start)
                return
        await self.app(scope, _replaying(raw, complete, receive), send)

    async def _answer(
        self, scope: Scope, token: bytes, raw: bytes, key: bytes | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """(status, body, headers) when the lane answers; None leaves it to the route."""
        app = scope["app"]
        state: AppState = app.state.longrun
        sec: Security = app.state.security
        if state.submits is None:
            return None
        found = _ticket(state, sec, token, raw, key)
        if found is None:
            return None
        ticket, who = found
        try:
            sub = await state.submits.submit(ticket)
        except NeedsLock:
            scope[ADMITTED] = True  # the route takes the locked path without a second token
            return None
        except Fallback:
            scope[GROUPED] = True  # the route submits it alone, not in a group again
            return None
        except StaleKey:
            return None
        except ApiError as exc:
            return _error(scope, exc.status, exc.code, exc.detail, exc.headers)
        except Unavailable as exc:
            retry = {"Retry-After": str(exc.retry_after)}
            return _error(scope, 503, exc.code, exc.detail, retry)
        return _accepted(scope, sec, who, ticket.new.agent, sub)


def _ticket(
    state: AppState, sec: Security, token: bytes, raw: bytes, key: bytes | None
) -> tuple[Ticket, Principal] | None:
    """The request as a group's ticket (and who sent it), or None when the route must see it."""
    try:
        who = cached_principal(sec, token.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if who is None:
        return None
    try:
        body = SubmitRun.model_validate_json(raw)
    except ValidationError:
        return None
    if body.thread_id is not None:
        return None
    try:
        agent = validate_submit(state, body)
    except ApiError:
        return None
    keyed = None
    if key is not None:
        text = key.decode("latin-1")
        if not IDEMPOTENCY_KEY_RE.fullmatch(text):
            return None
        keyed = (text, submit_digest(body, agent))
    new = NewRun(
        user_id=who.user,
        agent=agent,
        input=body.input,
        params=body.params,
        metadata=body.metadata,
    )
    return Ticket(new, who.epoch, keyed), who


def _accepted(
    scope: Scope, sec: Security, who: Principal, agent: str, sub: Submitted
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """`api.runs.accepted`'s answer, built without a Request."""
    links = run_links(scope, sec, sub.run_id, who)
    body = orjson.dumps(
        {
            "run_id": sub.run_id,
            "status": sub.status,
            "agent": agent,
            "thread_id": sub.thread_id,
            "created_at": sub.created_at.isoformat(),
            **links,
        }
    )
    return 202, body, _headers(scope, body, {"location": location(links["url"])})


def _error(
    scope: Scope, status: int, code: str, detail: str, extra: dict[str, str]
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """`api.errors.error_response`'s answer, with this request's id."""
    rid = request_id_from(scope["headers"])
    body = orjson.dumps({"error": code, "detail": detail, "request_id": rid})
    return status, body, _headers(scope, body, {k.lower(): v for k, v in extra.items()}, rid)


def _headers(
    scope: Scope, body: bytes, extra: dict[str, str], rid: str | None = None
) -> list[tuple[bytes, bytes]]:
    rid = rid or request_id_from(scope["headers"])
    return [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()),
        (b"x-request-id", rid.encode("ascii")),
    ]


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
