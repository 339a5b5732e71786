"""Request body limits, enforced while reading: Starlette has none of its own, and a chunked
body has no Content-Length. A pure ASGI middleware, so a refused request costs bounded memory."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware import scope_request_id


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


async def _refuse(send: Send, scope: Scope, limit: int) -> None:
    payload = {"error": "body_too_large", "detail": f"request body exceeds {limit} bytes"}
    rid = scope_request_id(scope)
    if rid is not None:
        payload["request_id"] = rid
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _may_have_body(scope: Scope) -> bool:
    """Whether the request can carry a body: HTTP/1.1 frames one only with Content-Length (not
    0) or Transfer-Encoding."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _refuse(send, scope, self.max_bytes)
                return
        if not _may_have_body(scope):
            # Nothing to limit: no wrappers, so a long response (an event stream) pays no
            # extra layer per send.
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, scope, self.max_bytes)

    def __repr__(self) -> str:  # pragma: no cover
        return f"BodyLimit({self.max_bytes})"


__all__: list[Any] = ["BodyLimit"]
