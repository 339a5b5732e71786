"""Single flight: concurrent callers asking for the same thing share one call in flight.

Why: every waiter of a run is answered in the same instant, when the hub reads the run's
terminal event; without this, 10,000 waiters would make 10,000 identical Postgres reads and
Redis calls at once (bench/wait.py measured the burst), where one per run, and one in all for
the key epoch, answers them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Coalesced:
    def __init__(self) -> None:
        self._flying: dict[Hashable, asyncio.Future[Any]] = {}

    async def __call__(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`'s result, or that of the call for `key` already in flight. A caller that
        is cancelled does not cancel the call the others wait on."""
        flying = self._flying.get(key)
        if flying is None:
            flying = asyncio.ensure_future(call())
            self._flying[key] = flying
            flying.add_done_callback(lambda _: self._flying.pop(key, None))
        result: T = await asyncio.shield(flying)
        return result
