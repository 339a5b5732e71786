"""Cost ceilings: the per-run one and the per-user daily one.

The daily spend lives outside the loop, behind `SpendLedger` (the worker supplies one backed by
Postgres; `MemoryLedger` serves a lone process and tests). The loop charges every model turn to
the ledger as soon as the turn ends and then asks `budget_verdict`, a pure function, whether the
run may go on. A ceiling of 0 (or less) means "no ceiling".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Protocol, TypeVar

from shared.errors import Unavailable

T = TypeVar("T")

COST_BUDGET_EXCEEDED = "cost_budget_exceeded"
DAILY_BUDGET_EXCEEDED = "daily_budget_exceeded"


class SpendLedger(Protocol):
    async def spent_today(self, user_id: str) -> float:
        """USD the user has spent since 00:00 UTC today."""
        ...

    async def add_spend(self, user_id: str, usd: float) -> None: ...


class PatientLedger:
    """A ledger that rides out an outage of the store behind it (Postgres away for a while):
    the loop's calls wait and retry, with backoff, for up to `patience` seconds instead of
    failing the run. A spend whose reply was lost may be charged twice: the ledger guards a
    ceiling, so it errs on the side of the ceiling."""

    def __init__(self, inner: SpendLedger, patience: float) -> None:
        self.inner = inner
        self.patience = patience

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.patience
        delay = 0.05
        while True:
            try:
                return await call()
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def spent_today(self, user_id: str) -> float:
        return await self._patiently(lambda: self.inner.spent_today(user_id))

    async def add_spend(self, user_id: str, usd: float) -> None:
        await self._patiently(lambda: self.inner.add_spend(user_id, usd))


class MemoryLedger:
    """Per-process daily spend by UTC day (so only one process's spend is seen)."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.now = now
        self.spent: dict[tuple[str, date], float] = {}

    async def spent_today(self, user_id: str) -> float:
        return self.spent.get((user_id, self.now().date()), 0.0)

    async def add_spend(self, user_id: str, usd: float) -> None:
        key = (user_id, self.now().date())
        # Older days are never read again: drop them so the ledger stays bounded.
        for old in [k for k in self.spent if k[1] != key[1]]:
            del self.spent[old]
        self.spent[key] = self.spent.get(key, 0.0) + usd


def budget_verdict(
    run_cost: Decimal, day_spent: float, max_run_usd: float, max_day_usd: float
) -> str | None:
    """The error code that ends the run, or None. A ceiling is hit once spend reaches it."""
    if max_run_usd > 0 and run_cost >= Decimal(str(max_run_usd)):
        return COST_BUDGET_EXCEEDED
    if max_day_usd > 0 and day_spent >= max_day_usd:
        return DAILY_BUDGET_EXCEEDED
    return None
