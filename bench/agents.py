"""Bench-only agents, registered with LONGRUN_AGENTS="bench=bench.agents:stamp".

`stamp` emits `count` token events at `rate` per second, each token's text being the producer's
wall clock (`time.time()`) taken just before the event is yielded to the worker's fenced append,
optionally followed by a space and `pad` bytes of filler. It starts at unix time `start_at` (so
subscribers can connect first) and ends with `done`. Latency = receipt time - the stamp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from shared.agents.base import RunContext


def parse_stamp(text: str) -> float:
    return float(text.split(" ", 1)[0])


async def stamp(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    count = int(ctx.params.get("count", 100))
    rate = float(ctx.params.get("rate", 100.0))
    pad = " " + "x" * int(ctx.params["pad"]) if ctx.params.get("pad") else ""
    start_at = float(ctx.params.get("start_at", 0.0))
    if start_at > time.time():
        await asyncio.sleep(start_at - time.time())
    t0 = time.monotonic()
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield {"type": "token", "text": f"{time.time():.6f}{pad}"}
    yield {"type": "done", "output": {"count": count}}
