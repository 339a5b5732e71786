"""`ticker`: the deterministic agent for demos, load and chaos tests.

It emits `count` tokens "1".."count" every `interval_ms`, then `done`. On resume it reads the
last event any attempt appended and continues after it, so across crashes the tokens are still
exactly 1..count (appends are fenced, so the event log is the checkpoint).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from shared.agents.base import RunContext
from shared.config import Settings
from shared.errors import AgentError

MAX_COUNT = 1_000_000
MAX_INTERVAL_MS = 3_600_000


def ticker_params(params: dict[str, Any]) -> tuple[int, int]:
    """Validated (count, interval_ms); AgentError(bad_params) on nonsense."""
    count = params.get("count", 10)
    interval = params.get("interval_ms", 100)
    ok = (
        isinstance(count, int)
        and not isinstance(count, bool)
        and 0 <= count <= MAX_COUNT
        and isinstance(interval, (int, float))
        and not isinstance(interval, bool)
        and 0 <= interval <= MAX_INTERVAL_MS
    )
    if not ok:
        raise AgentError(
            f"ticker takes count 0..{MAX_COUNT} and interval_ms 0..{MAX_INTERVAL_MS}",
            code="bad_params",
        )
    return int(count), int(interval)


def params_problem(settings: Settings, params: dict[str, Any]) -> str | None:
    """Why `params` would fail a ticker run, or None (for the API to refuse them with a 4xx)."""
    try:
        ticker_params(params)
    except AgentError as exc:
        return exc.detail
    return None


def resume_from(last_event: dict[str, Any] | None) -> int:
    """How many tokens an earlier attempt already emitted, judged from its last event."""
    if last_event and last_event.get("type") == "token":
        text = last_event.get("text")
        if isinstance(text, str) and text.isdigit():
            return int(text)
    return 0


async def ticker(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    count, interval_ms = ticker_params(ctx.params)
    start = resume_from(ctx.last_event) if ctx.resumed else 0
    for n in range(start + 1, count + 1):
        if interval_ms:
            await asyncio.sleep(interval_ms / 1000)
        yield {"type": "token", "text": str(n)}
    yield {"type": "done", "output": {"count": count}}
