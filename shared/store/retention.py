"""Retention, and the partitions of the event archive: every statement the workers' retention
job (`worker/retention.py`) sends.

`run_events` is partitioned by RANGE on `run_created_at` (the run's `created_at`, migration
0012): a run's events live in one partition, and a partition holds the events of the runs
created in its range. The job keeps partitions ahead of time (`ensure_partitions`: each made
aside and attached, taking its rows out of the default partition if any landed there), finds
the partitions whose every run is past retention (`droppable`), deletes expired runs in
bounded batches (`delete_batch`): the runs of those partitions without their events, and,
with their events, the expired runs no drop will take soon (their partition is held by a run
kept longer: still running, waiting, a longer retention, a live thread; or they are in the
default partition); then drops each partition no run row points into any more
(`drop_emptied`): a run's row never outlives its events.

A run is past retention when it ended (succeeded, failed, cancelled) at least its retention
ago: its own `retention_days` (its API key's, copied when it was submitted), else the
deployment's (`LONGRUN_RETENTION_DAYS`); 0 is forever. A run of a thread is kept while any run
of its thread is kept (the conversation stays whole). Nothing is deleted before its time; an
expired run's rows go within one partition period (plus a pass) of it expiring.

All of it runs under one session advisory lock on a connection held for the pass (`lock`):
one job at a time across workers. Each write is its own short transaction whose DDL waits at
most `LOCK_TIMEOUT` for its lock (a drop or an attach never queues the archive's readers and
writers behind a long query); what did not happen is tried at the next pass.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.store.pool import Database

# "longrun retention" as a 64-bit advisory lock key (the migrations' is 0x6C6F6E6772756E).
LOCK_KEY = 0x6C727265746E
LOCK_TIMEOUT = "2s"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TERMINAL = "('succeeded', 'failed', 'cancelled')"
# A partition is dropped only this long after its range ended: a run is created at Postgres's
# `now()`, which may be behind the worker's clock.
DROP_MARGIN = timedelta(hours=1)
DEFAULT_PARTITION = "run_events_default"


def _expired(r: str) -> str:
    """SQL: run `r` is past retention at `$1` under the deployment's days `$2`."""
    days = f"coalesce({r}.retention_days, $2::int)"
    return (
        f"({r}.status IN {TERMINAL} AND {days} > 0 "
        f"AND {r}.finished_at <= $1::timestamptz - make_interval(days => {days}))"
    )


# Run `r` is kept: not past retention, or in a thread that has a run not past it.
KEPT = f"""(NOT {_expired("r")} OR (r.thread_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM runs o WHERE o.user_id = r.user_id AND o.thread_id = r.thread_id
          AND NOT {_expired("o")})))"""

PARTITIONS = r"""SELECT c.relname AS name,
        (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                      'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)')) AS bounds
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'run_events'::regclass"""

# Any run created in [$1, $2) left at all?
HOLDS_ANY = """SELECT EXISTS (SELECT 1 FROM runs
    WHERE created_at >= $1::timestamptz AND created_at < $2::timestamptz)"""

# Any run created in [$3, $4) still kept? (walks `runs_created` over the range; stops at the
# first kept run).
HOLDS_KEPT = f"""SELECT EXISTS (SELECT 1 FROM runs r
    WHERE r.created_at >= $3::timestamptz AND r.created_at < $4::timestamptz AND {KEPT})"""

# The expired runs a batch deletes, at most $4: per retention class (a loose index scan of
# `runs_retention` finds the classes: NULL, i.e. the deployment's, and each override), from its
# oldest finished run; only those past retention by more than one partition period ($3 days),
# or that no partition but the default holds (created outside [$5[i], $6[i]) for every i), or
# whose partition is to be dropped (created in some [$7[i], $8[i])), and not kept by their
# thread. The delete re-checks the status: a run re-run meanwhile stays.
DELETE_BATCH = f"""WITH RECURSIVE class(d) AS (
        SELECT min(coalesce(retention_days, -1)) FROM runs WHERE status IN {TERMINAL}
      UNION ALL
        SELECT (SELECT min(coalesce(retention_days, -1)) FROM runs
                WHERE status IN {TERMINAL} AND coalesce(retention_days, -1) > class.d)
        FROM class WHERE class.d IS NOT NULL
    ), span AS (
        SELECT d, days
        FROM class, LATERAL (SELECT CASE WHEN d = -1 THEN $2::int ELSE d END) AS k(days)
        WHERE d IS NOT NULL AND days > 0
    ), doomed AS (
        SELECT c.run_id FROM span, LATERAL (
            SELECT r.run_id FROM runs r
            WHERE r.status IN {TERMINAL} AND coalesce(r.retention_days, -1) = span.d
              AND r.finished_at <= $1::timestamptz - make_interval(days => span.days)
              AND (r.finished_at <= $1::timestamptz - make_interval(days => span.days + $3::int)
                   OR NOT EXISTS (
                       SELECT 1 FROM unnest($5::timestamptz[], $6::timestamptz[]) AS p(lo, hi)
                       WHERE r.created_at >= p.lo AND r.created_at < p.hi)
                   OR EXISTS (
                       SELECT 1 FROM unnest($7::timestamptz[], $8::timestamptz[]) AS p(lo, hi)
                       WHERE r.created_at >= p.lo AND r.created_at < p.hi))
              AND NOT {KEPT}
            ORDER BY coalesce(r.retention_days, -1), r.finished_at
            LIMIT $4::int
        ) c
        LIMIT $4::int
    )
    DELETE FROM runs WHERE run_id IN (SELECT run_id FROM doomed) AND status IN {TERMINAL}
    RETURNING run_id, created_at"""

# A batch's events, within one partition's range ($2, $3): pruned to it when the statement runs.
DELETE_EVENTS = """DELETE FROM run_events
    WHERE run_id = ANY($1::uuid[]) AND run_created_at >= $2 AND run_created_at < $3"""
DELETE_DEFAULT_EVENTS = f"DELETE FROM {DEFAULT_PARTITION} WHERE run_id = ANY($1::uuid[])"
DELETE_INTERRUPTS = "DELETE FROM run_interrupts WHERE run_id = ANY($1::uuid[])"


@dataclass(frozen=True, order=True)
class Partition:
    """One partition of `run_events` and the range of run creation times it holds."""

    lo: datetime
    hi: datetime
    name: str


def partition_name(lo: datetime) -> str:
    return f"run_events_{lo.astimezone(UTC):%Y%m%d}"


def align(t: datetime, period_days: int) -> datetime:
    """The start of the period `t` falls in: periods are counted from 1970-01-01 UTC."""
    days = (t - EPOCH) // timedelta(days=1)
    return EPOCH + timedelta(days=days - days % period_days)


def plan_partitions(
    existing: Sequence[Partition], since: datetime, until: datetime, period_days: int
) -> list[tuple[datetime, datetime]]:
    """The ranges to create so that [align(since), until) is covered: whole periods, except
    where an existing partition (made under another period) already covers part of one."""
    made = sorted((p.lo, p.hi) for p in existing)
    out: list[tuple[datetime, datetime]] = []
    start = align(since, period_days)
    while start < until:
        covering = next((hi for lo, hi in made if lo <= start < hi), None)
        if covering is not None:
            start = covering
            continue
        end = align(start, period_days) + timedelta(days=period_days)
        end = min([end, *(lo for lo, _ in made if start < lo < end)])
        out.append((start, end))
        start = end
    return out


def partition_of(partitions: Sequence[Partition], created_at: datetime) -> Partition | None:
    return next((p for p in partitions if p.lo <= created_at < p.hi), None)


class RetentionRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[asyncpg.Connection | None]:
        """A connection holding the retention lock for the pass, or None when another worker
        holds it. The lock is the session's, on a connection of its own that is closed after
        the pass, which ends the lock (as Postgres does if this process dies)."""
        async with self.db.session() as c:
            yield c if await c.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY) else None

    async def partitions(self, c: asyncpg.Connection) -> list[Partition]:
        """The range partitions of `run_events`, oldest first (not the default one)."""
        out = []
        for r in await c.fetch(PARTITIONS):
            if r["bounds"] is not None:
                lo, hi = (datetime.fromisoformat(b) for b in r["bounds"])
                out.append(Partition(lo, hi, r["name"]))
        return sorted(out)

    async def ensure_partitions(
        self, c: asyncpg.Connection, since: datetime, until: datetime, period_days: int
    ) -> list[str]:
        """Create the partitions [since, until) lacks; returns their names."""
        made = []
        for lo, hi in plan_partitions(await self.partitions(c), since, until, period_days):
            try:
                await self._attach(c, lo, hi)
            except asyncpg.LockNotAvailableError:  # busy: the next pass tries again
                break
            made.append(partition_name(lo))
        return made

    async def _attach(self, c: asyncpg.Connection, lo: datetime, hi: datetime) -> None:
        """A new partition: made aside with the range as a checked constraint (so attaching
        scans nothing but the default partition, which is normally empty), given the rows of
        its range from the default partition, attached, in one transaction."""
        name = partition_name(lo)
        in_range = "run_created_at >= $1 AND run_created_at < $2"
        async with c.transaction():
            await c.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await c.execute(f"CREATE TABLE {name} (LIKE run_events INCLUDING ALL)")
            await c.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK "
                f"(run_created_at >= '{lo.isoformat()}' AND run_created_at < '{hi.isoformat()}')"
            )
            await c.execute(
                f"""WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE {in_range} RETURNING *)
                    INSERT INTO {name} SELECT * FROM moved""",
                lo,
                hi,
            )
            await c.execute(
                f"ALTER TABLE run_events ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
            await c.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")

    async def droppable(
        self, c: asyncpg.Connection, now: datetime, retention_days: int
    ) -> list[Partition]:
        """The partitions wholly in the past whose every run is past retention (and not kept
        by its thread): their runs' rows go by batch, without their events, then the
        partition is dropped (`drop_emptied`)."""
        out = []
        for p in await self.partitions(c):
            if p.hi > now - DROP_MARGIN:
                break
            if not await c.fetchval(HOLDS_KEPT, now, retention_days, p.lo, p.hi):
                out.append(p)
        return out

    async def drop_emptied(self, c: asyncpg.Connection, parts: Sequence[Partition]) -> list[str]:
        """Drop each of `parts` no run row points into any more (checked again once its
        writers are locked out); returns the names dropped. One whose lock is busy, or whose
        runs are not all deleted yet, waits for a later pass."""
        dropped = []
        for p in parts:
            if await c.fetchval(HOLDS_ANY, p.lo, p.hi):
                continue
            try:
                async with c.transaction():
                    await c.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    await c.execute(f"LOCK TABLE {p.name} IN ACCESS EXCLUSIVE MODE")
                    if await c.fetchval(HOLDS_ANY, p.lo, p.hi):
                        continue
                    await c.execute(f"DROP TABLE {p.name}")
            except asyncpg.LockNotAvailableError:
                continue
            dropped.append(p.name)
        return dropped

    async def delete_batch(
        self,
        c: asyncpg.Connection,
        now: datetime,
        retention_days: int,
        period_days: int,
        limit: int,
        dropping: Sequence[Partition] = (),
    ) -> int:
        """Delete at most `limit` expired runs (and their events, checkpoints, idempotency
        keys, webhook deliveries, interrupts, thread messages) in one short transaction;
        returns how many went (fewer than `limit`: nothing more is due now). The runs of the
        partitions `dropping` go too, but not their events: the partition's drop takes them."""
        parts = await self.partitions(c)
        async with c.transaction():
            gone = await c.fetch(
                DELETE_BATCH,
                now,
                retention_days,
                period_days,
                limit,
                [p.lo for p in parts],
                [p.hi for p in parts],
                [p.lo for p in dropping],
                [p.hi for p in dropping],
            )
            by_range: dict[Partition | None, list[uuid.UUID]] = {}
            for r in gone:
                by_range.setdefault(partition_of(parts, r["created_at"]), []).append(r["run_id"])
            for p, ids in by_range.items():
                if p is not None and p in dropping:  # their events go with the partition
                    continue
                if p is None:  # no partition covers them: the default one holds their events
                    await c.execute(DELETE_DEFAULT_EVENTS, ids)
                else:
                    await c.execute(DELETE_EVENTS, ids, p.lo, p.hi)
            if gone:
                await c.execute(DELETE_INTERRUPTS, [r["run_id"] for r in gone])
        return len(gone)
