"""The writes of concurrent attempts, grouped (group commit, `shared.batching.Coalescer`, no
timer): calls that arrive while a statement is in flight go together in the next one. Each
attempt still gets its own outcome: a run whose attempt lost its lease gets `LeaseLost` alone,
the others in its batch commit.

Three kinds, each two steps riding one flush so an attempt queues once for both:
- a claim, then its Redis fence (one pipeline for the batch's re-claimed runs);
- events: committed to Postgres (one statement for the batch, fenced per run on its attempt
  and its log's last seq), THEN copied to Redis for fan-out (one pipeline). Postgres first:
  no client can see an event a fault could later take back;
- a run's end: its terminal state and last events committed (one statement), then copied to
  Redis, which closes the run's log there too.
A Redis step that fails does not undo the Postgres one: the outcome says the copy is missing
(`Written.redis` None) and the attempt sends it again with its next copy.

Each kind has `LANES` coalescers: a call goes to one with no flush in flight, so an attempt
waits for its own round trip, not for the one before it (Postgres shares the fsync of
concurrent commits). Statements lock their rows in run_id order: lanes cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import structlog

from shared.batching import Coalescer
from shared.errors import LeaseLost, Unavailable
from shared.models import Run
from shared.redis.pipeline import ScriptCall
from shared.redis.runs import AppendResult, Fence, Gap, RedisIO
from shared.store import EventBatch, Finishing, Store

log = structlog.get_logger("longrun.worker")

MAX_BATCH = 256
LANES = 2
# The lanes' statements find runs by id (arrays unnested) and nothing else, so one generic
# plan serves every call, and it must read `runs` by its key. Left to choose, Postgres planned
# each call afresh while many runs were running (an append took 0.67 ms against 0.41 with
# 2,000 running), and a plan it kept was made while `runs` was small: a sequential scan, which
# then read the whole table on every append (0.2 ms more per 2,000 runs, where autovacuum is
# off or has not yet analyzed the table, as on this machine: bench.stream_ttft's later
# repeats). With sequential scans priced out, the one plan is the key's whatever the size.
LANE_SESSION = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}

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


@dataclass(frozen=True)
class Written:
    """Committed to Postgres; `redis` is the copy's outcome, None when Redis did not take it
    (away, a script error, or `gap`: it holds the run's events only up to that seq, having
    lost some): the events are safe, their fan-out is late."""

    redis: AppendResult | None
    gap: int | None = None


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
        self.appends: Lanes[tuple[EventBatch, ScriptCall], Written] = Lanes(
            self._append, lanes, "append"
        )
        self.ends: Lanes[tuple[Finishing, ScriptCall], Written] = Lanes(self._end, lanes, "end")
        # Each lane keeps a Postgres connection of its own (`LANE_SESSION`), outside the pool.
        self._conns: dict[tuple[str, int], asyncpg.Connection] = {}

    async def _conn(self, lane: tuple[str, int]) -> asyncpg.Connection:
        conn = self._conns.get(lane)
        if conn is None:
            conn = await self.store.db.dedicated(LANE_SESSION)
            self._conns[lane] = conn
        return conn

    async def _drop(self, lane: tuple[str, int]) -> None:
        """After an outage: end the (maybe broken) connection; the next flush opens another."""
        conn = self._conns.pop(lane, None)
        if conn is not None:
            await self.store.db.discard(conn)

    async def close(self) -> None:
        for lane in list(self._conns):
            await self._drop(lane)

    @property
    def idle(self) -> bool:
        return self.claims.idle and self.appends.idle and self.ends.idle

    async def claim(self, run_id: str, *, reclaim: bool, entry_id: str) -> Claimed:
        return await self.claims.call((run_id, reclaim, entry_id))

    async def append(self, batch: EventBatch, copy: ScriptCall) -> Written:
        """Commit a run's events, then copy them to Redis (`copy`: the append script's call,
        which may carry earlier events Redis missed). Raises LeaseLost when the attempt no
        longer owns the run's log, Unavailable when Postgres is away (nothing committed, or
        committed with the reply lost: a retry finds out by reading)."""
        return await self.appends.call((batch, copy))

    async def end(self, finishing: Finishing, copy: ScriptCall) -> Written:
        """Commit a run's terminal state and last events, then copy them to Redis (which
        closes the run's log there). Raises as `append` does."""
        return await self.ends.call((finishing, copy))

    async def _claim(self, lane: int, items: list[tuple[str, bool, str]]) -> list[Claimed]:
        wanted = [(run_id, reclaim) for run_id, reclaim, _ in items]
        runs = await self._on_lane(
            ("claim", lane), lambda c: self.store.batches.claim_many(wanted, c)
        )
        fences: dict[int, Fence | LeaseLost] = {}
        claimed = []
        for i, run in enumerate(runs):
            if run is None:
                continue
            if run.attempt == 1:
                # The run's first attempt: no attempt before it wrote anything, so its fence
                # goes up with its first copy to Redis.
                fences[i] = Fence(seq=run.last_seq, cancel_requested=False, deferred=True)
            else:
                claimed.append((i, run))
        if claimed:
            try:
                outcomes = await self.rio.fence_many(
                    [(run.run_id, run.attempt, self.consumer, items[i][2]) for i, run in claimed]
                )
            except Exception as exc:  # the claims stand; each attempt fences itself
                log.warning("batch_fence_failed", error=type(exc).__name__, runs=len(claimed))
            else:
                for (i, _), out in zip(claimed, outcomes, strict=True):
                    if isinstance(out, Fence | LeaseLost):
                        fences[i] = out
        return [Claimed(run, fences.get(i)) for i, run in enumerate(runs)]

    async def _on_lane(
        self, key: tuple[str, int], statement: Callable[[asyncpg.Connection], Awaitable[R]]
    ) -> R:
        """A statement on a lane's own connection; an outage gives the connection back (the
        next flush takes another) and raises `Unavailable` for the whole batch."""
        try:
            return await statement(await self._conn(key))
        except Unavailable:
            await self._drop(key)
            raise

    async def _append(
        self, lane: int, items: list[tuple[EventBatch, ScriptCall]]
    ) -> list[Written | BaseException]:
        batches = [b for b, _ in items]
        refused = await self._on_lane(
            ("append", lane), lambda c: self.store.events.append_many(batches, c)
        )
        return await self._copy(items, refused)

    async def _end(
        self, lane: int, items: list[tuple[Finishing, ScriptCall]]
    ) -> list[Written | BaseException]:
        endings = [f for f, _ in items]
        refused = await self._on_lane(
            ("end", lane), lambda c: self.store.batches.finish_many(endings, c)
        )
        return await self._copy(items, refused)

    async def _copy(
        self,
        items: Sequence[tuple[EventBatch | Finishing, ScriptCall]],
        refused: Sequence[LeaseLost | None],
    ) -> list[Written | BaseException]:
        """Copy to Redis what Postgres committed; one outcome per item."""
        out: list[Written | BaseException] = [
            r if r is not None else Written(None) for r in refused
        ]
        committed = [i for i, r in enumerate(refused) if r is None]
        if not committed:
            return out
        try:
            replies = await self.rio.run_now([items[i][1] for i in committed])
        except Exception as exc:  # Redis away: committed all the same, the copy comes later
            log.warning("events_copy_failed", error=type(exc).__name__, runs=len(committed))
            return out
        for i, reply in zip(committed, replies, strict=True):
            item = items[i][0]
            res = self.rio.append_outcome(item.run_id, item.attempt, reply)
            if isinstance(res, AppendResult):
                out[i] = Written(res)
            elif isinstance(res, Gap):
                out[i] = Written(None, gap=res.redis_seq)
            elif isinstance(res, LeaseLost):
                out[i] = res
        return out
