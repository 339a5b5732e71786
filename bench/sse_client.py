"""A lean asyncio SSE client for load: raw HTTP/1.1 over asyncio streams, chunked decoding, SSE
framing. httpx costs ~10x more CPU per event, and the load generator shares the 2 cores with the
servers it measures, so the fan-out benchmarks use this instead.

`subscribe()` calls `on_event(event_type, data, id)` for each event and returns when the server
closes the stream, when `stop` is set, or on the terminal `done`/`error`/`cancelled` event.
`pause` (an asyncio.Event), while set, makes the client stop reading: a slow client whose kernel
buffers fill up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

TERMINAL = frozenset({"done", "error", "cancelled"})
OnEvent = Callable[[str, str, str | None], None]


class SSEError(RuntimeError):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise SSEError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _chunks(
    reader: asyncio.StreamReader, chunked: bool, pause: asyncio.Event | None
) -> AsyncIterator[bytes]:
    while True:
        if pause is not None and pause.is_set():
            await _wait_cleared(pause)
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def _wait_cleared(ev: asyncio.Event) -> None:
    while ev.is_set():
        await asyncio.sleep(0.05)


async def subscribe(
    host: str,
    port: int,
    path: str,
    on_event: OnEvent,
    *,
    headers: dict[str, str] | None = None,
    stop: asyncio.Event | None = None,
    pause: asyncio.Event | None = None,
    connected: Callable[[], None] | None = None,
    body: bytes | None = None,
    on_head: Callable[[dict[str, str]], None] | None = None,
) -> int:
    """Follow one SSE stream (`GET path`, or `POST path` with a JSON `body`: a submit answered
    with its stream); returns the number of events seen."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    method = "GET" if body is None else "POST"
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await writer.drain()
        status, resp_headers = await _read_head(reader)
        if status != 200:
            raise SSEError(f"{method} {path} answered {status}")
        if on_head is not None:
            on_head(resp_headers)
        if connected is not None:
            connected()
        chunked = "chunked" in resp_headers.get("transfer-encoding", "")
        return await _pump(reader, chunked, on_event, stop, pause)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _pump(
    reader: asyncio.StreamReader,
    chunked: bool,
    on_event: OnEvent,
    stop: asyncio.Event | None,
    pause: asyncio.Event | None,
) -> int:
    buf = b""
    seen = 0
    etype, data, eid = "message", "", None
    async for chunk in _chunks(reader, chunked, pause):
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line = buf[:nl].rstrip(b"\r").decode()
            buf = buf[nl + 1 :]
            if line == "":
                if data or etype != "message":
                    seen += 1
                    on_event(etype, data, eid)
                    if etype in TERMINAL:
                        return seen
                etype, data, eid = "message", "", None
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data = f"{data}\n{value}" if data else value
                elif field == "event":
                    etype = value
                elif field == "id":
                    eid = value
        if stop is not None and stop.is_set():
            break
    return seen
