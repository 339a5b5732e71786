"""The writes of concurrent attempts, grouped (group commit, `shared.batching.Coalescer`, no
timer): claims that arrive while a claim statement is in flight go together in the next one, and
so do terminal commits. Each attempt still gets its own outcome: a run whose attempt lost its
lease gets `LeaseLost` alone, the others in its batch commit.

Two steps that always follow each other ride in one flush, so an attempt queues once for both:
- a claim, then its Redis fence (one pipeline for the batch's claimed runs);
- the terminal append, then the terminal commit: one pipeline of fenced appends, then one
  statement for the runs whose append went in. (The ack follows, grouped with other Redis
  calls: by then the run no longer holds a slot, so no attempt waits on it to start.)
A step that fails leaves the steps before it standing (never redone): the attempt does the
rest itself, with its own retries.

Each kind has `LANES` coalescers: a call goes to one with no flush in flight, so an attempt
waits for its own round trip, not for the one before it (Postgres shares the fsync of
concurrent commits). Statements lock their rows in run_id order: lanes cannot deadlock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import structlog

from shared.batching import Coalescer
from shared.errors import LeaseLost, Unavailable
from shared.models import Run
from shared.redis.pipeline import ScriptCall
from shared.redis.runs import Fence, RedisIO
from shared.store import Finishing, Store

log = structlog.get_logger("longrun.worker")

MAX_BATCH = 256
# How far `RunWrites.end` got for a run.
APPENDED, COMMITTED = 1, 2
LANES = int(__import__("os").environ.get("LR_LANES", "2"))

T = TypeVar("T")
R = TypeVar("R")
# A lane's flush: (lane index, items) -> one outcome per item.
LaneFlush = Callable[[int, list[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass(frozen=True)
class Claimed:
    run: Run | None  # None: not claimable (unknown, finished, held by another attempt)
    # The run's fence, raised in the same flush; LeaseLost if a later attempt holds it;
    # None if it could not be raised (Redis away, a script error): the attempt raises it.
    fence: Fence | LeaseLost | None


class Lanes(Generic[T, R]):
    """`n` coalescers over one flush function; a call joins an idle one if there is one, else
    the one with the fewest calls waiting."""

    def __init__(self, flush: LaneFlush[T, R], n: int, name: str) -> None:
        self.in_flight = [0] * n
        self.waiting = [0] * n
        self.lanes: list[Coalescer[T, R]] = [
            Coalescer(self._counted(i, flush), max_batch=MAX_BATCH, name=name) for i in range(n)
        ]
        self.name = name

    def _counted(
        self, i: int, flush: LaneFlush[T, R]
    ) -> Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]:
        async def run(items: list[T]) -> Sequence[R | BaseException]:
            self.waiting[i] -= len(items)
            self.in_flight[i] += 1
            try:
                return await flush(i, items)
            finally:
                self.in_flight[i] -= 1

        return run

    async def call(self, item: T) -> R:
        best = 0
        for i, busy in enumerate(self.in_flight):
            if not busy:
                best = i
                break
            if self.waiting[i] < self.waiting[best]:
                best = i
        self.waiting[best] += 1  # the flush that takes the item counts it off
        return await self.lanes[best].call(item)

    @property
    def idle(self) -> bool:
        return not any(self.waiting) and not any(self.in_flight)

    @property
    def flushes(self) -> int:
        return sum(c.flushes for c in self.lanes)

    @property
    def items(self) -> int:
        return sum(c.items for c in self.lanes)


class RunWrites:
    def __init__(self, store: Store, rio: RedisIO, consumer: str, lanes: int = LANES) -> None:
        self.store = store
        self.rio = rio
        self.consumer = consumer
        self.claims: Lanes[tuple[str, bool, str], Claimed] = Lanes(self._claim, lanes, "claim")
        self.ends: Lanes[tuple[ScriptCall | None, Finishing], int] = Lanes(self._end, lanes, "end")
        # Each lane keeps its own Postgres connection: a pooled acquire and release costs a
        # reset round trip per statement.
        self._conns: dict[tuple[str, int], asyncpg.Connection] = {}

    async def _conn(self, lane: tuple[str, int]) -> asyncpg.Connection:
        conn = self._conns.get(lane)
        if conn is None:
            conn = await self.store.db.acquire()
            self._conns[lane] = conn
        return conn

    async def _drop(self, lane: tuple[str, int]) -> None:
        """After an outage: give the (maybe broken) connection back; the next flush takes
        another."""
        conn = self._conns.pop(lane, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await self.store.db.release(conn)

    async def close(self) -> None:
        for lane in list(self._conns):
            await self._drop(lane)

    @property
    def idle(self) -> bool:
        return self.claims.idle and self.ends.idle

    async def claim(self, run_id: str, *, reclaim: bool, entry_id: str) -> Claimed:
        return await self.claims.call((run_id, reclaim, entry_id))

    async def end(self, append: ScriptCall | None, item: Finishing) -> int:
        """End a run (outside a thread): append its terminal events under the fence (unless
        `append` is None: already appended), then commit its terminal state and archive.
        Returns how far it got (APPENDED, COMMITTED): the caller does the rest itself. Raises
        what refused the run (LeaseLost, EventCapExceeded, SeqConflict), or a Redis outage
        before the append."""
        return await self.ends.call((append, item))

    async def _claim(self, lane: int, items: list[tuple[str, bool, str]]) -> list[Claimed]:
        key = ("claim", lane)
        try:
            runs = await self.store.batches.claim_many(
                [(run_id, reclaim) for run_id, reclaim, _ in items], await self._conn(key)
            )
        except Unavailable:
            await self._drop(key)
            raise
        fences: dict[int, Fence | LeaseLost] = {}
        claimed = []
        for i, run in enumerate(runs):
            if run is None:
                continue
            if run.attempt == 1:
                # The run's first attempt: no attempt before it wrote anything, so its fence
                # goes up with its first append.
                fences[i] = Fence(seq=run.last_seq, cancel_requested=False, deferred=True)
            else:
                claimed.append((i, run))
        if claimed:
            try:
                outcomes = await self.rio.fence_many(
                    [
                        (run.run_id, run.attempt, self.consumer, run.last_seq, items[i][2])
                        for i, run in claimed
                    ]
                )
            except Exception as exc:  # the claims stand; each attempt fences itself
                log.warning("batch_fence_failed", error=type(exc).__name__, runs=len(claimed))
            else:
                for (i, _), out in zip(claimed, outcomes, strict=True):
                    if isinstance(out, Fence | LeaseLost):
                        fences[i] = out
        return [Claimed(run, fences.get(i)) for i, run in enumerate(runs)]

    async def _end(
        self, lane: int, items: list[tuple[ScriptCall | None, Finishing]]
    ) -> list[int | BaseException]:
        out: list[int | BaseException] = [APPENDED] * len(items)
        appends = [(i, call) for i, (call, _) in enumerate(items) if call is not None]
        if appends:
            replies = await self.rio.run_now([call for _, call in appends])  # outage: all fail
            for (i, _), reply in zip(appends, replies, strict=True):
                res = self.rio.append_outcome(items[i][1].run_id, items[i][1].attempt, reply)
                if isinstance(res, BaseException):
                    out[i] = res
        ok = [i for i, o in enumerate(out) if o == APPENDED]
        if ok:
            await self._commit_and_ack(lane, items, ok, out)
        return out

    async def _commit_and_ack(
        self,
        lane: int,
        items: list[tuple[ScriptCall | None, Finishing]],
        ok: list[int],
        out: list[int | BaseException],
    ) -> None:
        key = ("end", lane)
        try:
            outcomes = await self.store.batches.finish_many(
                [items[i][1] for i in ok], await self._conn(key)
            )
        except Exception as exc:  # appended all the same: each attempt commits itself
            if isinstance(exc, Unavailable):
                await self._drop(key)
            log.warning("batch_commit_failed", error=type(exc).__name__, runs=len(ok))
            return
        for i, res in zip(ok, outcomes, strict=True):
            out[i] = COMMITTED if res is None else res
