"""Server-level limits the ASGI app cannot enforce itself: the size of a request's head (request
line plus headers), counted while it arrives, before any of it is parsed into Python objects.

uvicorn's h11 protocol has a bound (`h11_max_incomplete_event_size`); its httptools protocol,
the fast one `longrun api` uses, has none (httptools buffers a header of any length). So here
the httptools protocol counts the bytes of the head as they arrive and answers 431 and closes
past `max_header_bytes`. `server_options(settings)` gives uvicorn both bounds.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.config import Settings

_BODY = b'{"error":"headers_too_large","detail":"request headers are too large"}'
_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class BoundedHttpTools(HttpToolsProtocol):
    max_head_bytes = 16 * 1024

    def connection_made(self, transport: Any) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # the next bytes on this connection start the next head
        self._head_bytes = 0
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self.transport.write(_RESPONSE)
                self.transport.close()
                return
        super().data_received(data)


def http_protocol(max_head_bytes: int) -> type[BoundedHttpTools]:
    return type("BoundedHttpTools", (BoundedHttpTools,), {"max_head_bytes": max_head_bytes})


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn keyword arguments bounding the request head, for either HTTP implementation."""
    return {
        "http": http_protocol(settings.max_header_bytes),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
