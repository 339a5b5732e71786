"""Request ids: every request carries one (`X-Request-ID`, generated when absent or unusable),
echoed in the response header, bound into structlog's context variables for every log line
of the request, and put into error bodies by `api.errors`.

A pure ASGI middleware, outermost of ours, so even a refusal from an inner middleware (413)
carries the id. The id a client sends is kept only if it is short and plain (no header
injection, no log forging); otherwise a fresh one replaces it.
"""

from __future__ import annotations

import logging
import re
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
# The scope key under which the `send` this middleware received is kept: an event stream sends
# its body frames there once its response has started through the whole stack (see
# `api.events.EventStream`), past the layers below that act only on the response start (the
# request id header, CORS) or on its end (`ReconnectHint`).
OUTER_SEND = "longrun.outer_send"
# The scope key under which `api.server`'s protocol puts a callable that drops the connection at
# once (an ASGI app has no other way to end a connection whose client stopped reading: every
# send waits for the client).
ABORT = "longrun.abort"
_USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_from(headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> str:
    """The client's id when usable, else a new random one."""
    for name, value in headers:
        if name == HEADER and _USABLE.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


def scope_request_id(scope: Scope) -> str | None:
    rid = scope.get("state", {}).get("request_id")
    return rid if isinstance(rid, str) else None


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # (an id the lane chose already, when it answers through this layer: the same one)
        rid = scope_request_id(scope) or request_id_from(scope.get("headers", ()))
        scope.setdefault("state", {})["request_id"] = rid
        scope[OUTER_SEND] = send
        raw = rid.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message["headers"] = [*headers, (HEADER, raw)]
            await send(message)

        # bind + reset by token: `bound_contextvars` copies the whole context twice a request
        # (~10% of a submit's CPU in bench.submit's profile).
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


_TOKEN_IN_URL = re.compile(r"((?:^|[?&])token=)[^&\s\"']+")


def redact_url_tokens(text: str) -> str:
    return _TOKEN_IN_URL.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Defence in depth for access logs (off in `longrun api`, but a deployment may turn them
    on): a stream token in a logged URL becomes `token=[redacted]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_url_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url_tokens(a) if isinstance(a, str) else a for a in record.args
            )
        return True


def install_log_redaction() -> None:
    """Idempotent: attaches one RedactTokens to uvicorn's access logger."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
