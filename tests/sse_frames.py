"""The tests' strict reader of `text/event-stream` frames, to check the wire itself: a frame's
own `id` (None when it has none, where a browser-style parser such as httpx-sse repeats the last
one), and only frames that carry data. Clients use httpx-sse (the SDK, the CLI through it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str
    data: str


@dataclass
class FrameParser:
    """Fed one decoded line at a time (no newline); returns a Frame when a blank line ends
    one. Comments and frames without data (keep-alives, `retry:` hints) give nothing."""

    fid: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Frame | None:
        if line == "":
            frame = Frame(self.fid, self.event, "\n".join(self.data)) if self.data else None
            self.fid, self.event, self.data = None, "message", []
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self.fid = value
        elif name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def parse_lines(lines: Iterator[str]) -> Iterator[Frame]:
    parser = FrameParser()
    for line in lines:
        if (frame := parser.feed(line)) is not None:
            yield frame


async def aparse_lines(lines: AsyncIterator[str]) -> AsyncIterator[Frame]:
    parser = FrameParser()
    async for line in lines:
        if (frame := parser.feed(line)) is not None:
            yield frame
