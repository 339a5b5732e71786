"""Schedules (migration 0015): a user's cron schedules, and the tick transaction that makes
their runs.

Exactly one run per tick, across any number of workers and restarts: `tick` takes the due
schedules `FOR UPDATE SKIP LOCKED` (a worker never waits on another's), and in the same
transaction records each (schedule, tick) in `schedule_ticks` (its primary key is the unique
key: a tick recorded already makes nothing), inserts the runs through the submit's own
statement (`submits.insert_queued`: the rows a `POST /runs` would insert) and moves each
schedule's `next_tick_at` on. A crash before the commit leaves nothing; after it, everything.
The caller adds the queue entries after the commit; one Redis refuses is added by the
reconciler (a queued run with no entry), as for a submit whose take-back failed.

What tick a due schedule makes at `now` is decided by `shared.cron.due_tick` (the missed-ticks
policy is there). One more rule keeps a schedule's runs bounded when they cannot start (workers
saturated, a busy thread ahead of them): a tick while the schedule's previous run is still
queued makes no run (the tick is recorded, with no run, and logged `schedule_tick_skipped`). So
a schedule has at most one queued run; a previous run that has started (running, waiting,
ended) does not hold the next one back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from shared import cron
from shared.errors import Conflict
from shared.models import Run
from shared.store.pool import Database
from shared.store.rows import RUN_COLUMNS, NewRun, run_of
from shared.store.submits import insert_queued

log = structlog.get_logger("longrun.schedules")

SCHEDULE_COLUMNS = (
    "schedule_id, user_id, cron, timezone, agent, input, params, metadata, thread_id, key_id, "
    "next_tick_at, last_tick_at, ticks, created_at"
)
# A schedule whose expression no longer parses (its zone left the tz database) is looked at
# again this much later, not on every pass.
BROKEN_RETRY = timedelta(hours=1)

INSERT = f"""INSERT INTO schedules (schedule_id, user_id, cron, timezone, agent, input, params,
        metadata, thread_id, key_id, next_tick_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    RETURNING {SCHEDULE_COLUMNS}"""

LIVE_COUNT = "SELECT count(*) FROM schedules WHERE user_id = $1 AND deleted_at IS NULL"
LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

TAKE_DUE = f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
    WHERE deleted_at IS NULL AND next_tick_at <= $1
    ORDER BY next_tick_at LIMIT $2
    FOR UPDATE SKIP LOCKED"""

# The unique key: a (schedule, tick) recorded already is not returned, and makes no run.
RECORD_TICKS = """INSERT INTO schedule_ticks (schedule_id, tick_at)
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
    ON CONFLICT DO NOTHING
    RETURNING schedule_id, tick_at"""

LINK_RUNS = """UPDATE schedule_ticks t SET run_id = u.run_id
    FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[]) AS u(schedule_id, tick_at, run_id)
    WHERE t.schedule_id = u.schedule_id AND t.tick_at = u.tick_at"""

# `made_at`: the tick whose run was made, NULL when none was (not due, skipped, made before).
ADVANCE = """UPDATE schedules s
    SET next_tick_at = u.next_at,
        last_tick_at = coalesce(u.made_at, s.last_tick_at),
        ticks = s.ticks + (u.made_at IS NOT NULL)::int
    FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
        AS u(schedule_id, next_at, made_at)
    WHERE s.schedule_id = u.schedule_id"""

# The schedules (of those given with their last run's tick) whose last run is still queued.
STILL_QUEUED = """SELECT u.schedule_id
    FROM unnest($1::uuid[], $2::timestamptz[]) AS u(schedule_id, tick_at)
    JOIN schedule_ticks t ON t.schedule_id = u.schedule_id AND t.tick_at = u.tick_at
    JOIN runs r ON r.run_id = t.run_id
    WHERE r.status = 'queued'"""

RUN_COLUMNS_OF_R = ", ".join(f"r.{c.strip()}" for c in RUN_COLUMNS.split(","))

FIGURES = """SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS live,
        coalesce(sum(ticks), 0)::bigint AS ticks
    FROM schedules"""


class TooManySchedules(Conflict):
    code = "too_many_schedules"


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to create: its cadence, its first tick, and the run each tick makes."""

    cron: str
    timezone: str
    next_tick_at: datetime
    run: NewRun


@dataclass(frozen=True)
class Schedule:
    schedule_id: str
    user_id: str
    cron: str
    timezone: str
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    thread_id: str | None
    key_id: str | None
    next_tick_at: datetime
    last_tick_at: datetime | None
    ticks: int
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """The schedule as the API answers it (no key id)."""
        return {
            "schedule_id": self.schedule_id,
            "cron": self.cron,
            "timezone": self.timezone,
            "agent": self.agent,
            "input": self.input,
            "params": self.params,
            "metadata": self.metadata,
            "thread_id": self.thread_id,
            "next_run_at": self.next_tick_at.isoformat(),
            "last_run_at": None if self.last_tick_at is None else self.last_tick_at.isoformat(),
            "runs_made": self.ticks,
            "created_at": self.created_at.isoformat(),
        }

    def template(self) -> NewRun:
        """The run a tick makes."""
        return NewRun(
            user_id=self.user_id,
            agent=self.agent,
            input=self.input,
            params=self.params,
            metadata=self.metadata,
            thread_id=self.thread_id,
            key_id=self.key_id,
        )


def schedule_of(r: asyncpg.Record) -> Schedule:
    data = dict(r)
    data["schedule_id"] = str(data["schedule_id"])
    return Schedule(**data)


@dataclass(frozen=True)
class Made:
    """A run a tick made (committed; its queue entry still to add)."""

    schedule_id: str
    tick_at: datetime
    run_id: str
    user_id: str


@dataclass(frozen=True)
class ScheduleFigures:
    live: int  # schedules not deleted
    ticks: int  # runs every schedule ever made


@dataclass(frozen=True)
class _Plan:
    schedule: Schedule
    tick: cron.Tick | None  # None: its expression is broken; looked at again later


def _plan(s: Schedule, now: datetime) -> _Plan:
    try:
        tick = cron.due_tick(cron.parse(s.cron, s.timezone, now), s.next_tick_at, now)
    except Exception as exc:  # BadCron, or the parser failing on it: this one waits, not all
        log.warning("schedule_broken", schedule_id=s.schedule_id, error=repr(exc)[:200])
        return _Plan(s, None)
    return _Plan(s, tick)


class ScheduleRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, new: NewSchedule, *, max_per_user: int) -> Schedule:
        """Insert the schedule unless the user has `max_per_user` live ones already
        (TooManySchedules); counted under the user's lock, so racing creates cannot pass it."""
        run = new.run
        async with self.db.conn() as c, c.transaction():
            await c.execute(LOCK_USER, f"longrun:schedules:{run.user_id}")
            live = int(await c.fetchval(LIVE_COUNT, run.user_id))
            if live >= max_per_user:
                raise TooManySchedules(
                    f"{live} schedules (the most a user may have is {max_per_user}): "
                    "delete one first"
                )
            row = await c.fetchrow(
                INSERT,
                uuid.uuid4(),
                run.user_id,
                new.cron,
                new.timezone,
                run.agent,
                run.input,
                run.params,
                run.metadata,
                run.thread_id,
                run.key_id,
                new.next_tick_at,
            )
        assert row is not None
        return schedule_of(row)

    async def get(self, schedule_id: str, user_id: str) -> Schedule | None:
        """One of the user's live schedules (another user's is None, as a missing one)."""
        row = await self.db.fetchrow(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE schedule_id = $1 AND user_id = $2 AND deleted_at IS NULL""",
            uuid.UUID(schedule_id),
            user_id,
        )
        return None if row is None else schedule_of(row)

    async def list_schedules(
        self, user_id: str, *, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[Schedule]:
        """The user's live schedules, newest first; `before` is the (created_at, id) of the
        last one of the previous page (keyset on `schedules_user_created`)."""
        rows = await self.db.fetch(
            f"""SELECT {SCHEDULE_COLUMNS} FROM schedules
                WHERE user_id = $1 AND deleted_at IS NULL
                  AND ($2::timestamptz IS NULL OR (created_at, schedule_id) < ($2, $3::uuid))
                ORDER BY created_at DESC, schedule_id DESC LIMIT $4""",
            user_id,
            before[0] if before else None,
            uuid.UUID(before[1]) if before else None,
            limit,
        )
        return [schedule_of(r) for r in rows]

    async def delete(self, schedule_id: str, user_id: str) -> bool:
        """Delete one of the user's live schedules (no tick after this commits); False when
        there is none such. The runs it made stay."""
        done = await self.db.execute(
            """UPDATE schedules SET deleted_at = now()
               WHERE schedule_id = $1 AND user_id = $2 AND deleted_at IS NULL""",
            uuid.UUID(schedule_id),
            user_id,
        )
        return done.split()[-1] != "0"

    async def runs(
        self, schedule_id: str, user_id: str, *, limit: int, before: datetime | None = None
    ) -> list[tuple[datetime, Run]]:
        """The runs a schedule made, by tick, newest first: (tick, run). `before`: the tick
        of the last one of the previous page."""
        rows = await self.db.fetch(
            f"""SELECT t.tick_at, {RUN_COLUMNS_OF_R}
                FROM schedule_ticks t
                JOIN schedules s ON s.schedule_id = t.schedule_id
                JOIN runs r ON r.run_id = t.run_id
                WHERE t.schedule_id = $1 AND s.user_id = $2 AND r.user_id = $2
                  AND ($3::timestamptz IS NULL OR t.tick_at < $3)
                ORDER BY t.tick_at DESC LIMIT $4""",
            uuid.UUID(schedule_id),
            user_id,
            before,
            limit,
        )
        out = []
        for r in rows:
            data = dict(r)
            tick = data.pop("tick_at")
            out.append((tick, run_of(data)))
        return out

    async def tick(self, now: datetime, limit: int) -> list[Made]:
        """Make the runs of up to `limit` schedules due at `now`, in one transaction (see the
        module docstring); the runs made, committed when this returns."""
        async with self.db.conn() as c, c.transaction():
            rows = await c.fetch(TAKE_DUE, now, limit)
            if not rows:
                return []
            plans = [_plan(schedule_of(r), now) for r in rows]
            return await _make(c, plans, now)

    async def figures(self) -> ScheduleFigures:
        row = await self.db.fetchrow(FIGURES)
        assert row is not None
        return ScheduleFigures(live=int(row["live"]), ticks=int(row["ticks"]))


async def _make(c: asyncpg.Connection, plans: Sequence[_Plan], now: datetime) -> list[Made]:
    due = [(p.schedule, p.tick) for p in plans if p.tick is not None]
    busy = await _still_queued(c, [s for s, _ in due])
    recorded = await c.fetch(
        RECORD_TICKS,
        [uuid.UUID(s.schedule_id) for s, _ in due],
        [t.tick_at for _, t in due],
    )
    fresh = {(str(r["schedule_id"]), r["tick_at"]) for r in recorded}
    making = []
    for s, t in due:
        if (s.schedule_id, t.tick_at) not in fresh:
            continue  # made already: the unique key
        if s.schedule_id in busy:
            log.info("schedule_tick_skipped", schedule_id=s.schedule_id, tick_at=t.tick_at)
            continue
        making.append((s, t))
    run_ids = await insert_queued(c, [s.template() for s, _ in making])
    made = [
        Made(s.schedule_id, t.tick_at, run_id, s.user_id)
        for (s, t), run_id in zip(making, run_ids, strict=True)
    ]
    if made:
        await c.execute(
            LINK_RUNS,
            [uuid.UUID(m.schedule_id) for m in made],
            [m.tick_at for m in made],
            [uuid.UUID(m.run_id) for m in made],
        )
    await _advance(c, plans, made, now)
    return made


async def _still_queued(c: asyncpg.Connection, schedules: Sequence[Schedule]) -> set[str]:
    """The schedules whose last run has not started yet (the skip policy: module docstring)."""
    last = [s for s in schedules if s.last_tick_at is not None]
    if not last:
        return set()
    rows = await c.fetch(
        STILL_QUEUED,
        [uuid.UUID(s.schedule_id) for s in last],
        [s.last_tick_at for s in last],
    )
    return {str(r["schedule_id"]) for r in rows}


async def _advance(
    c: asyncpg.Connection, plans: Sequence[_Plan], made: Sequence[Made], now: datetime
) -> None:
    made_at = {m.schedule_id: m.tick_at for m in made}
    await c.execute(
        ADVANCE,
        [uuid.UUID(p.schedule.schedule_id) for p in plans],
        [now + BROKEN_RETRY if p.tick is None else p.tick.next_at for p in plans],
        [made_at.get(p.schedule.schedule_id) for p in plans],
    )
