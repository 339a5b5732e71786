"""The worker's decisions as functions of values: a run's time limit and what is left of it,
usage totals, and how long to ride out a Redis or Postgres outage before giving the run up."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Protocol

import structlog

from shared.config import Settings
from shared.errors import Unavailable
from shared.redis.client import REDIS_DOWN

log = structlog.get_logger("longrun.worker")

RETRYABLE: tuple[type[BaseException], ...] = (Unavailable, *REDIS_DOWN)


def run_timeout(settings: Settings, params: dict[str, Any]) -> float:
    """The run's time limit: `params.timeout_seconds` if sane, capped by the configured max."""
    asked = params.get("timeout_seconds")
    if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
        return float(min(asked, settings.max_run_timeout_seconds))
    return settings.run_timeout_seconds


def remaining_seconds(limit: float, started_at: datetime | None, now: datetime) -> float:
    """Time left of a run's limit, counted from its first start across all attempts."""
    if started_at is None:
        return limit
    return max(0.0, limit - (now - started_at).total_seconds())


def usage_totals(usage: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Add one `usage` event's numbers to the run's totals (pure)."""
    out = dict(usage)
    for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cost_usd"):
        v = body.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = round(out.get(k, 0) + v, 10)
    return out


class Stop(Protocol):
    """What ends a retry loop early (an attempt's lease-lost signal)."""

    def is_set(self) -> bool: ...


async def retry_unavailable(what: str, fn: Any, *, stop: Stop, deadline: float) -> Any:
    """Call `fn()` until it stops raising Unavailable / Redis errors, backing off up to 2 s,
    until `deadline` (monotonic) or `stop` is set. LeaseLost passes straight through."""
    delay = 0.05
    while True:
        try:
            return await fn()
        except RETRYABLE as exc:
            if stop.is_set() or time.monotonic() + delay > deadline:
                raise
            log.warning("backing_store_unavailable", what=what, error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
