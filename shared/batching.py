"""Group commit: calls that arrive while a round trip is in flight share the next one.

One Python connection manages ~12k awaited round trips a second, Redis and Postgres take far
more when commands arrive together. A `Coalescer` turns many concurrent `await c.call(item)`
into one `flush(items)` per round trip, with no added delay: an idle coalescer flushes the
first call at once (a batch of one), and while that flush is in flight the next calls queue up
and go together as soon as it returns. Load sets the batch size, not a timer.

`flush` returns one outcome per item, in order: a value, or an exception instance for that item
alone. If `flush` itself raises, every item of the batch gets that exception.

A caller cancelled while waiting does not cancel the flush: the items of a batch are committed
together or not at all, whoever is still waiting for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

T = TypeVar("T")
R = TypeVar("R")

log = structlog.get_logger("longrun.batching")

Flush = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_batch: int = 256,
        concurrency: int = 1,
        name: str = "batch",
    ) -> None:
        self._flush = flush
        self.max_batch = max_batch
        # Flushes in flight at once: with more than one, a batch is sent while the previous
        # one's round trip is still out (order between batches is then not kept).
        self.concurrency = concurrency
        self.name = name
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._runners: set[asyncio.Task[None]] = set()
        # Figures for the benches and /metrics: how many flushes, how many items in all.
        self.flushes = 0
        self.items = 0

    async def call(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        if len(self._runners) < self.concurrency:
            self._runners.add(asyncio.create_task(self._run(), name=f"coalesce-{self.name}"))
        return await fut

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                await self._flush_batch(batch)
        finally:
            # Leave the set before anything else runs, so the next call starts a new runner.
            self._runners.discard(asyncio.current_task())
            if self._waiting and not self._runners:  # cancelled (loop closing): never hang
                for _, fut in self._waiting:
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"{self.name} coalescer stopped"))
                self._waiting.clear()

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        self.items += len(batch)
        try:
            outcomes = await self._flush([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{self.name}: {len(outcomes)} outcomes for {len(batch)} items")
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"{self.name} flush was cancelled"))
            raise
        except BaseException as exc:  # every item of the batch shares the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            if fut.done():  # its caller went away; the work is done all the same
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
