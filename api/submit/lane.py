"""`POST /runs` and `POST /runs/stream` without FastAPI's per-request machinery: the adapter
for the common request.

Why: in `bench.submit`, FastAPI's routing, dependency solving and exception layers cost more CPU
per submit than the whole grouped commit (`api.submit.groups`) does. Driving the app in-process,
a submit took ~330 us of CPU with about two thirds of it in those layers (see bench/RESULTS.md).

What the lane takes: whatever it can parse without I/O: a JSON body that `SubmitRun` (for
`/runs/stream`, `SubmitStream`) accepts and a bearer token known from the key cache or a JWT
(`cached_principal`). It runs the same pipeline as the route (`api.submit.pipeline`) and
answers with the same renderer (`api.submit.render`), byte for byte; a submit-and-stream gets
the route's own answer (`api.submit.stream.answer`: the event stream, or the refusal), under
the two layers an event stream needs (the request id, the reconnect hint). Anything else (no
or an unknown bearer token, another content type, a body the model refuses, a cross-origin
request when CORS is on) goes on to the route untouched, its body replayed: the lane hands on
only requests the pipeline has not seen, so the route needs no word on what was tried. The
routes also stay the ones in the OpenAPI schema. (`bench.stream_ttft`: FastAPI's layers were
~0.3 ms of a submit-and-stream's time to its first token.)

It is the outermost of our middlewares, and does for its own answers what the inner ones do
for the route's: the request id (the same rule, kept in the scope where `api.errors` finds it
for an unexpected error's answer), the body limit (a body without a Content-Length within the
limit goes to the route, where `BodyLimit` applies) and the submit timer. Passing through four
pure-ASGI layers cost ~40 us a submit.
"""

from __future__ import annotations

import time
from functools import partial

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Principal, Security, cached_principal, current_user, remember
from api.errors import ApiError
from api.metrics import ApiMetrics
from api.middleware import RequestId, request_id_from
from api.shutdown import ReconnectHint
from api.state import AppState
from api.submit import pipeline
from api.submit import stream as submit_stream
from api.submit.render import render, response
from api.submit.request import SubmitRun, SubmitStream

_JSON = (b"application/json", b"application/json; charset=utf-8")
# The routes the lane answers, and the body each takes.
BODIES: dict[str, type[SubmitRun] | type[SubmitStream]] = {
    "/runs": SubmitRun,
    "/runs/stream": SubmitStream,
}


class SubmitLane:
    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ApiMetrics, cors: bool) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.cors = cors  # cross-origin requests then go through the CORS middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        model = BODIES.get(path)
        if model is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        token: bytes | None = None
        key: bytes | None = None
        size = -1
        plain = True
        for name, value in scope["headers"]:
            if name == b"authorization":
                if token is None:  # the first, as the route reads it
                    scheme, _, rest = value.partition(b" ")
                    token = rest.strip() if scheme.lower() == b"bearer" else b""
            elif name == b"content-length":
                size = int(value) if value.isdigit() else -1
            elif name == b"idempotency-key":
                key = value if key is None else key
            elif (name == b"content-type" and value.lower() not in _JSON) or (
                name == b"origin" and self.cors
            ):
                plain = False
        if not token or not plain or not 0 <= size <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        raw, complete = await _read_body(receive)
        parsed = _parse(scope, token, raw, model) if complete else None
        if parsed is None:
            await self.app(scope, _replaying(raw, complete, receive), send)
            return
        body, who = parsed
        app = scope["app"]
        state: AppState = app.state.longrun
        sec: Security = app.state.security
        scope.setdefault("state", {})["request_id"] = request_id_from(scope["headers"])
        idempotency_key = None if key is None else key.decode("latin-1")
        if isinstance(body, SubmitStream):
            await _stream(scope, receive, send, state, sec, body, who, idempotency_key)
            return
        authenticate = partial(_current_user, scope)
        outcome = await pipeline.submit(state, sec, body, who, idempotency_key, authenticate)
        answer = render(outcome, scope, sec)
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})
        self.metrics.submit_seconds.labels(str(answer.status)).observe(time.perf_counter() - start)


async def _stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    state: AppState,
    sec: Security,
    body: SubmitStream,
    who: Principal,
    idempotency_key: str | None,
) -> None:
    """`POST /runs/stream`'s answer (`api.submit.stream.answer`) under the layers an event
    stream needs of the stack it skipped: the request id on the answer (and `OUTER_SEND`
    for its body frames), and the reconnect hint for a stream the server stops."""
    remember(Request(scope), who)  # whom the stream's token is for, as the route leaves it
    try:
        answer = await submit_stream.answer(
            state, sec, Request(scope, receive), body, who, idempotency_key
        )
    except ApiError as exc:  # past the process's cap: 503 streams_full
        answer = response(render(pipeline.Refused(exc), scope, sec))
    await RequestId(ReconnectHint(answer))(scope, receive, send)


def _parse(
    scope: Scope, token: bytes, raw: bytes, model: type[SubmitRun] | type[SubmitStream]
) -> tuple[SubmitRun | SubmitStream, Principal] | None:
    """The body and the caller, when both are known without I/O; None hands the request on."""
    try:
        who = cached_principal(scope["app"].state.security, token.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if who is None:
        return None
    try:
        return model.model_validate_json(raw), who
    except ValidationError:
        return None


async def _current_user(scope: Scope) -> str:
    return await current_user(Request(scope))


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
