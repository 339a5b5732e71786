"""The HTTP connection layer below the ASGI app: what a connection may cost before it is a
request. uvicorn's httptools protocol (the fast one `longrun api` runs) with four bounds added:

- **Head size** (`max_header_bytes`): the request line and headers, counted up to the blank
  line that ends them, as they arrive. Only head bytes count: a client that sends its body in
  the same TCP segment as its head (curl, urllib, httpx do) is not refused for its body
  (`head_size`). Past the bound: 431, then close. httptools itself buffers a head of any size.
- **Head time** (`head_timeout_seconds`): a connection must deliver a whole head within this
  time of its first byte, or of its opening when it sends nothing. uvicorn arms no timer before
  a first response, so a silent or one-byte-a-second connection was held forever. Past it: 408
  when part of a head came, a plain close when nothing did.
- **Idle keep-alive** (`keepalive_seconds`): uvicorn's own `timeout_keep_alive`, armed when a
  response ends.
- **Connections per process** (`max_connections`; 0 means the file-descriptor limit less
  `FD_RESERVE` for Redis, Postgres and logs): a connection past the cap gets an immediate 503
  `too_many_connections` with `Retry-After` and is closed, before it is read, so a flood of
  idle connections cannot take the last descriptors. Connections already open, kept-alive ones
  included, are served as before: a client (or probe) holding a connection keeps its `/health`.

None of these timers runs while a response is being produced: an event stream that lasts
hours is a request whose head came long ago. Every refusal is logged as one warning line per
bound at most every `LOG_EVERY` seconds, with the count since the last line.

Answers made here (431, 408, 503, and the 400 of an unparsable request) are JSON errors like the
app's, with an `X-Request-ID` (the client's when its head had a usable one). They, and any answer
that closes the connection while the request's body is still arriving (the app's 413), close it
lingering (`_linger`), so that the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.middleware import ABORT, request_id_from
from shared.config import Settings

log = structlog.get_logger("longrun.api.server")

HEAD_END = b"\r\n\r\n"  # llhttp takes CRLF only (a bare LF is a parse error)
LOG_EVERY = 10.0
FD_RESERVE = 256
MIN_CONNECTIONS = 16
CONNECTIONS_RETRY_AFTER = 1
LINGER_SECONDS = 2.0


def head_size(tail: bytes, data: bytes) -> int:
    """How many leading bytes of `data` belong to the head being received, given `tail`, the
    last bytes of the head received before `data` (3 suffice): up to and including the blank
    line, or all of `data` when the head does not end in it."""
    end = (tail + data).find(HEAD_END)
    if end < 0:
        return len(data)
    return end + len(HEAD_END) - len(tail)


def max_connections(configured: int) -> int:
    """The connection cap: the configured one, or (0) what the fd limit leaves."""
    if configured > 0:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(MIN_CONNECTIONS, soft - FD_RESERVE)


@dataclass
class RefusalLog:
    """At most one line per bound every `every` seconds, saying how many refusals it covers."""

    every: float = LOG_EVERY
    _last: dict[str, float] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    def note(self, bound: str, now: float) -> int | None:
        """Count a refusal; the number of refusals to report now, or None to stay quiet."""
        self._count[bound] = self._count.get(bound, 0) + 1
        last = self._last.get(bound)
        if last is not None and now - last < self.every:
            return None
        self._last[bound] = now
        return self._count.pop(bound)


def error_answer(
    status: int, code: str, detail: str, rid: str, extra: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A whole HTTP/1.1 response, the app's JSON error shape, closing the connection."""
    body = orjson.dumps({"error": code, "detail": detail, "request_id": rid})
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"x-request-id: {rid}",
        *(f"{k}: {v}" for k, v in extra),
        "connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Bounds:
    max_head_bytes: int
    head_timeout: float
    max_connections: int
    refusals: RefusalLog


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above. `bounds` is set per server by
    `http_protocol`."""

    bounds = Bounds(16 * 1024, 10.0, 1024, RefusalLog())

    def connection_made(self, transport: Any) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._open = False  # whether uvicorn knows this connection
        if len(self.connections) >= self.bounds.max_connections:
            self.transport = transport
            self._refuse(
                503,
                "too_many_connections",
                "this server holds as many connections as it may: retry shortly",
                "max_connections",
                (("retry-after", str(CONNECTIONS_RETRY_AFTER)),),
            )
            return
        super().connection_made(transport)
        self._open = True
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._open:
            super().connection_lost(exc)

    # -- the head ------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        cast(dict[str, Any], self.scope)[ABORT] = self.transport.abort
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = cast(asyncio.Transport, _CycleTransport(self))

    def on_message_complete(self) -> None:
        # The next bytes on this connection start the next head (its timer starts with them:
        # a client waiting for a long response sends nothing, and must not be cut off).
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        while data and not self._refused:
            if not self._in_head:
                self._feed(data)
                return
            if self._head_timer is None:
                self._arm_head_timer()
            size = head_size(self._tail, data)
            self._head_bytes += size
            if self._head_bytes > self.bounds.max_head_bytes:
                self._refuse(
                    431,
                    "headers_too_large",
                    f"the request head exceeds {self.bounds.max_head_bytes} bytes",
                    "max_header_bytes",
                )
                return
            head, data = data[:size], data[size:]
            self._tail = (self._tail + head)[-(len(HEAD_END) - 1) :]
            # Fed apart from what follows, so the parser leaves the head exactly where it
            # ends. Bytes after a blank line that did not end a head (llhttp skips empty lines
            # before a request line) go round again and are counted.
            if not self._feed(head):
                return

    def _feed(self, data: bytes) -> bool:
        """uvicorn's parsing step; False when the connection was answered and is closing."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(400, "bad_request", "the request is not valid HTTP/1.1", "parse_error")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", msg, "parse_error")

    # -- timers and refusals ----------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.bounds.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0:
            self._note("head_timeout_idle")
            self.transport.close()
            return
        self._refuse(
            408,
            "head_timeout",
            f"the request head did not arrive within {self.bounds.head_timeout:g} seconds",
            "head_timeout",
        )

    def _refuse(
        self,
        status: int,
        code: str,
        detail: str,
        bound: str,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Answer (unless a response is under way on this connection) and close."""
        self._refused = True
        self._cancel_head_timer()
        self._note(bound)
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: an answer would corrupt it
            return
        self.transport.write(
            error_answer(status, code, detail, request_id_from(self.headers or ()), extra)
        )
        self._linger()

    def _linger(self) -> None:
        """A lingering close: stop sending, drop what the client still sends until its end (on
        which the transport closes) or LINGER_SECONDS. Closing at once would answer the
        client's next bytes with a reset, which may destroy the answer before it is read."""
        self._refused = True  # what still arrives is dropped
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _close_after_response(self) -> None:
        """How a response cycle closes the connection (`connection: close`): lingering when
        the request's body is still arriving (a 413 before the body was read), else at once."""
        if self._in_head or self.transport.is_closing():
            self.transport.close()
        else:
            self._linger()

    def _note(self, bound: str) -> None:
        count = self.bounds.refusals.note(bound, time.monotonic())
        if count is not None:
            log.warning(
                "connection_refused",
                bound=bound,
                refused=count,
                connections=len(self.connections),
                per_seconds=self.bounds.refusals.every,
            )


class _CycleTransport:
    """The transport as a response cycle sees it: its `close` is the protocol's
    `_close_after_response`; everything else is the transport's."""

    def __init__(self, protocol: BoundedHttpTools) -> None:
        self._protocol = protocol
        self._transport = protocol.transport

    def close(self) -> None:
        self._protocol._close_after_response()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol(bounds: Bounds) -> type[BoundedHttpTools]:
    return type("BoundedHttpTools", (BoundedHttpTools,), {"bounds": bounds})


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn keyword arguments for the connection bounds (the h11 implementation, not the
    one `longrun api` runs, gets the head size bound only)."""
    bounds = Bounds(
        max_head_bytes=settings.max_header_bytes,
        head_timeout=settings.head_timeout_seconds,
        max_connections=max_connections(settings.max_connections),
        refusals=RefusalLog(),
    )
    return {
        "http": http_protocol(bounds),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keepalive_seconds,
    }
