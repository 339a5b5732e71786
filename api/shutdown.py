"""Graceful API shutdown with open SSE streams.

    SIGTERM ─> GracefulServer.handle_exit
                 ├─ state.shutting_down = True     /ready answers 503 from now on
                 ├─ hub.stop_streams()             every open stream ends between two events
                 │                                 (woken through the event loop, no polling)
                 └─ uvicorn: stop accepting, wait for connections (timeout_graceful_shutdown),
                    then the lifespan closes the hub, Redis and Postgres

uvicorn runs the lifespan's shutdown only after every connection has closed, so waiting for it
would keep SSE clients (which never close) until the graceful timeout cuts them off mid-stream.
Instead the signal itself flips the flags, each stream ends at once between two events, and
`ReconnectHint` appends a last frame to it: a `retry:` field and a comment, with no `id` (a
browser would store an id and skip events). The client reconnects, to another instance behind
the load balancer, with the `Last-Event-ID` of the last event it really got: no gap, no
duplicate, because a frame is sent whole or not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RECONNECT_MS = 250
HINT = (
    f"retry: {RECONNECT_MS}\r\n: server shutting down; reconnect with Last-Event-ID\r\n\r\n"
).encode()


def begin_shutdown(app: Any) -> None:
    """Mark the app as shutting down (readiness fails) and end its SSE streams."""
    state = getattr(app.state, "longrun", None)
    if state is not None:
        state.shutting_down = True
        state.hub.stop_streams()
    AppStatus.should_exit = True  # any sse-starlette response (the expired-token one)


class GracefulServer(uvicorn.Server):
    """A uvicorn server that tells the app about a shutdown signal as soon as it arrives."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.longrun_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_shutdown(self.longrun_app)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # The shutdown the signal asked for is complete: exit 0 like a drained worker,
            # instead of uvicorn re-raising the signal to die by it.
            self._captured_signals.clear()


class ReconnectHint:
    """Pure ASGI middleware: an event stream that ends without finishing its body (it was
    stopped: server shutdown, or the client left) gets the reconnect hint and a proper end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_sse = False
        finished = False

        async def watch(message: Message) -> None:
            nonlocal is_sse, finished
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", ())).get(b"content-type", b"")
                is_sse = ctype.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        await self.app(scope, receive, watch)
        if is_sse and not finished:
            await send({"type": "http.response.body", "body": HINT, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
