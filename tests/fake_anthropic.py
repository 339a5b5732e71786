"""A local HTTP server speaking the Anthropic Messages streaming API, for the real SDK to talk to.

It answers `POST /v1/messages` from a script: each request takes the next answer queued for its
model (or the shared queue). A `Reply` streams SSE the way the API does (`message_start`,
`content_block_start/delta/stop` with `text_delta` and `input_json_delta`, `message_delta` with
usage and stop reason, `message_stop`), optionally hanging, cutting the connection or sending an
`error` event part-way. A `Fail` answers with an HTTP error (429 with `retry-after`, 529
`overloaded_error`, 500, 400 ...). Plain asyncio, on a free port of 127.0.0.1, in the test's
own event loop. An unscripted request gets a 400, so a test that under-scripts fails loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    text: str = ""
    # (name, args): a dict is sent as JSON in pieces; a str is sent raw (malformed on purpose).
    tools: Sequence[tuple[str, dict[str, Any] | str]] = ()
    stop_reason: str | None = None
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_input_tokens: int = 0
    delay: float = 0.0  # between events
    hang_after: int | None = None  # stop sending after this many events (until teardown)
    cut_after: int | None = None  # drop the connection after this many events
    end_after: int | None = None  # end the body cleanly after this many events
    error_after: int | None = None  # send an `error` event after this many events
    error_type: str = "overloaded_error"
    model: str | None = None  # the model the answer claims (default: the requested one)


@dataclass(frozen=True)
class Fail:
    status: int
    error_type: str = "api_error"
    message: str = "scripted failure"
    retry_after: str | None = None


Answer = Reply | Fail


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model"))


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def reply_events(reply: Reply, model: str, n: int) -> list[dict[str, Any]]:
    """The SSE events of one streamed answer."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": f"msg_fake_{n}",
                "type": "message",
                "role": "assistant",
                "model": reply.model or model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": reply.input_tokens,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": reply.cache_read_input_tokens,
                },
            },
        },
        {"type": "ping"},
    ]
    index = 0
    if reply.text:
        events.append(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
        for i, word in enumerate(reply.text.split(" ")):
            piece = word if i == 0 else " " + word
            events.append(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                }
            )
        events.append({"type": "content_block_stop", "index": 0})
        index = 1
    for k, (name, args) in enumerate(reply.tools):
        raw = args if isinstance(args, str) else json.dumps(args)
        events.append(
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": f"toolu_fake_{n}_{k}",
                    "name": name,
                    "input": {},
                },
            }
        )
        cut = max(1, len(raw) // 2)
        for part in (raw[:cut], raw[cut:]):
            if part:
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    }
                )
        events.append({"type": "content_block_stop", "index": index})
        index += 1
    stop = reply.stop_reason or ("tool_use" if reply.tools else "end_turn")
    events.append(
        {
            "type": "message_delta",
            "delta": {"type": "message_delta", "stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        }
    )
    events.append({"type": "message_stop"})
    return events


@dataclass
class FakeAnthropic:
    queues: dict[str | None, list[Answer]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Set when a hanging answer has started hanging (tests await it instead of sleeping).
    hanging: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *answers: Answer, model: str | None = None) -> None:
        self.queues.setdefault(model, []).extend(answers)

    def requests_for(self, model: str) -> list[Seen]:
        return [r for r in self.requests if r.model == model]

    async def __aenter__(self) -> FakeAnthropic:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        # Released answers finish on their own; cancelling a stream handler makes asyncio log
        # an error, so that is only the last resort for a client that never hung up.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    def _next(self, model: str | None) -> Answer | None:
        for key in (model, None):
            queue = self.queues.get(key)
            if queue:
                return queue.pop(0)
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        _method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else {}
        self.requests.append(Seen(path, headers, body))
        answer = self._next(body.get("model"))
        if answer is None:
            answer = Fail(400, "invalid_request_error", "fake: no scripted answer left")
        if isinstance(answer, Fail):
            await self._fail(writer, answer)
            return True
        return await self._stream(writer, answer, str(body.get("model")), len(self.requests))

    async def _fail(self, writer: asyncio.StreamWriter, fail: Fail) -> None:
        payload = json.dumps(
            {"type": "error", "error": {"type": fail.error_type, "message": fail.message}}
        ).encode()
        head = [
            f"HTTP/1.1 {fail.status} Scripted",
            "content-type: application/json",
            f"content-length: {len(payload)}",
            "request-id: req_fake",
        ]
        if fail.retry_after is not None:
            head.append(f"retry-after: {fail.retry_after}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, reply: Reply, model: str, n: int) -> bool:
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            "transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
            "request-id: req_fake\r\nconnection: close\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        for i, event in enumerate(reply_events(reply, model, n)):
            if reply.hang_after is not None and i == reply.hang_after:
                self.hanging.set()
                await self._release.wait()
                return False
            if reply.cut_after is not None and i == reply.cut_after:
                writer.transport.abort()
                return False
            if reply.end_after is not None and i == reply.end_after:
                break
            if reply.error_after is not None and i == reply.error_after:
                err = {"type": "error", "error": {"type": reply.error_type, "message": "fake"}}
                self._chunk(writer, _sse(err))
                break
            self._chunk(writer, _sse(event))
            await writer.drain()
            if reply.delay:
                await asyncio.sleep(reply.delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
