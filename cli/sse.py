"""A small SSE client: parses `text/event-stream` frames and resumes with Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str
    data: str


def parse_lines(lines: Iterator[str]) -> Iterator[Frame]:
    """Frames from decoded lines (without newlines). Comments are skipped."""
    fid: str | None = None
    event = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Frame(fid, event, "\n".join(data))
            fid, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            fid = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


async def aparse_lines(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    fid: str | None = None
    event = "message"
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield Frame(fid, event, "\n".join(data))
            fid, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            fid = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
