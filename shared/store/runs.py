"""One run's rows: its reads (the API's polls and the event archive), the API's cancels, and the
worker's writes of one attempt (claim, checkpoint, terminal commit, hand-over, heartbeat).

Every status write is a compare-and-set on the old status (from the transition table in
`shared.models`) and, for a worker's writes, on the attempt it holds: a worker that lost its
lease finds its writes refused (`LeaseLost`). A write that ends a run adds it to the finished-run
counters in the same statement (`shared.store.counters`), and records the delivery of its
webhook, when it has one (`shared.store.webhooks`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.agents.base import Checkpoint
from shared.errors import LeaseLost
from shared.models import Event, QueuedRun, Run, RunStatus, Transition, sources
from shared.store.counters import ENDED_UNDER_FENCE, count_ended
from shared.store.pool import Database
from shared.store.rows import (
    RUN_COLUMNS,
    TARGETS,
    Finishing,
    checkpoint_of,
    event_of,
    run_of,
    scheduled_of,
)
from shared.store.threads import ThreadRepo
from shared.store.webhooks import deliveries_of

# A run in a thread is claimed only when no earlier run of its thread is still queued or
# waiting for a person (the partial unique index allows one running run per thread; this keeps
# their order, and a waiting run keeps its thread's turn).
# One NOT EXISTS per status, each matching its partial index (`runs_thread_queue`,
# `runs_thread_waiting`): with `status IN ('queued', 'waiting')` no partial index applies and
# every claim scanned `runs` (a second per claim at a few ten thousand runs).
THREAD_TURN = " AND ".join(
    f"""NOT EXISTS (
    SELECT 1 FROM runs earlier
    WHERE runs.thread_id IS NOT NULL
      AND earlier.user_id = runs.user_id
      AND earlier.thread_id = runs.thread_id
      AND earlier.status = '{status}'
      AND (earlier.created_at, earlier.run_id) < (runs.created_at, runs.run_id))"""
    for status in ("queued", "waiting")
)

# A delayed run is not claimed before its start (a second's leeway for the clocks of the
# worker that promoted it and of Postgres): an entry that came early is skipped, and the run,
# still queued, is promoted or reconciled again in time.
NOT_EARLY = "(runs.start_at IS NULL OR runs.start_at <= now() + interval '1 second')"

# The worker's heartbeat of its running runs in Postgres (`RunRepo.touch`); by their keys
# (`IS TRUE`: see `batches.CLAIM_MANY`), not by walking every running run.
TOUCH = (
    "UPDATE runs SET updated_at = now() WHERE run_id = ANY($1::uuid[]) "
    "AND (status = 'running') IS TRUE RETURNING run_id, cancel_requested"
)

# The partition key of a run's event rows (`run_events.run_created_at`, migration 0012): the
# run's own `created_at`. A read of a run's events names it, so that only the run's partition is
# read (pruned when the statement runs: tests/test_partitions.py pins it).
RUN_CREATED = "SELECT created_at FROM runs WHERE run_id = $1"
OF_RUN = f"run_id = $1 AND run_created_at = ({RUN_CREATED})"
# The archive's replay: a run's events after a seq, in order.
EVENTS_AFTER = (
    f"SELECT seq, type, data FROM run_events WHERE {OF_RUN} AND seq > $2 ORDER BY seq LIMIT $3"
)

# The terminal write of one run as one statement: the fence row is locked; the last events and
# the terminal state are written (counted, and its webhook's delivery recorded) only if this
# attempt still owns the run and its log ends right before the first of those events.
FINISH_ONE = f"""WITH fence AS (
        SELECT run_id, cost_usd, created_at FROM runs
        WHERE run_id = $1 AND attempt = $2 AND status = 'running' AND last_seq = $12 - 1
        FOR UPDATE
    ), archived AS (
        INSERT INTO run_events (run_id, run_created_at, seq, type, data)
        SELECT $1, fence.created_at, e.seq, e.type, e.data
        FROM unnest($9::int[], $10::text[], $11::bytea[]) AS e(seq, type, data), fence
    ), finished AS (
        UPDATE runs SET status = $3, output = $4, error = $5,
            usage = coalesce($6, usage), cost_usd = $7, finished_at = now(),
            updated_at = now(), last_seq = $8, event_bytes = event_bytes + $13
        WHERE run_id = (SELECT run_id FROM fence)
        RETURNING run_id, status, cost_usd, webhook_url
    ), {count_ended(ENDED_UNDER_FENCE)}, {deliveries_of("finished")}
    SELECT 1 FROM finished"""

# queued or waiting -> cancelled (no worker holds the run), counted, its webhook's delivery
# recorded; its `cancelled` event is archived as the next seq by the same transaction.
CANCEL_QUEUED = f"""WITH cancelled AS (
        UPDATE runs SET status = 'cancelled', cancel_requested = true,
            finished_at = now(), updated_at = now(), last_seq = last_seq + 1,
            interrupt = NULL, interrupt_deadline = NULL
        WHERE run_id = $1 AND user_id = $2 AND status IN ('queued', 'waiting')
        RETURNING {RUN_COLUMNS}
    ), {count_ended("(SELECT status, 0::float8 AS cost_delta FROM cancelled) AS ended")},
    {deliveries_of("cancelled")}
    SELECT {RUN_COLUMNS} FROM cancelled"""


def _status_list(move: Transition) -> list[str]:
    return sorted(str(s) for s in sources(move))


async def commit_end(c: asyncpg.Connection, f: Finishing) -> bool:
    """`FINISH_ONE` for `f` on `c`: whether it wrote (`settle_end` tells why not)."""
    row = await c.fetchval(
        FINISH_ONE,
        uuid.UUID(f.run_id),
        f.attempt,
        TARGETS[f.move],
        f.output,
        f.error,
        f.usage,
        f.cost_usd,
        f.events[-1].seq,
        [e.seq for e in f.events],
        [e.type for e in f.events],
        [e.data for e in f.events],
        f.events[0].seq,
        sum(len(e.data) for e in f.events),
    )
    return row is not None


async def settle_end(c: asyncpg.Connection, f: Finishing) -> LeaseLost | None:
    """A terminal write the statement did not confirm: committed by an earlier try whose reply
    was lost (the row says so: this attempt's status, its last seq), or refused (another
    attempt owns the run, or its log is not where this attempt left it)."""
    row = await c.fetchrow(
        "SELECT attempt, status, last_seq FROM runs WHERE run_id = $1", uuid.UUID(f.run_id)
    )
    if (
        row is not None
        and row["attempt"] == f.attempt
        and row["status"] == TARGETS[f.move]
        and row["last_seq"] == f.events[-1].seq
    ):
        return None
    return LeaseLost(f"run {f.run_id} attempt {f.attempt} no longer owns the run")


async def archive(c: asyncpg.Connection, run_id: str, events: Sequence[Event]) -> None:
    if events:
        await c.executemany(
            "INSERT INTO run_events (run_id, run_created_at, seq, type, data) "
            f"SELECT $1, ({RUN_CREATED}), $2, $3, $4 "
            "ON CONFLICT (run_id, seq, run_created_at) DO NOTHING",
            [(uuid.UUID(run_id), e.seq, e.type, e.data) for e in events],
        )


async def _fence(c: asyncpg.Connection, run_id: str, attempt: int) -> None:
    """Lock the run row and refuse unless this attempt still owns it (running)."""
    ok = await c.fetchval(
        "SELECT 1 FROM runs WHERE run_id = $1 AND attempt = $2 AND status = 'running' FOR UPDATE",
        uuid.UUID(run_id),
        attempt,
    )
    if ok is None:
        raise LeaseLost(f"run {run_id} attempt {attempt} no longer owns the run")


class RunRepo:
    def __init__(self, db: Database, threads: ThreadRepo) -> None:
        self.db = db
        self.threads = threads

    # -- the API side --------------------------------------------------------------------------
    async def get_run(self, run_id: str, user_id: str | None = None) -> Run | None:
        row = await self.db.fetchrow(
            f"SELECT {RUN_COLUMNS} FROM runs "
            "WHERE run_id = $1 AND ($2::text IS NULL OR user_id = $2)",
            uuid.UUID(run_id),
            user_id,
        )
        return None if row is None else run_of(row)

    async def list_runs(
        self,
        user_id: str | None,
        *,
        limit: int,
        before: tuple[datetime, str] | None = None,
        status: RunStatus | None = None,
        thread_id: str | None = None,
        agent: str | None = None,
        owner: str | None = None,
    ) -> list[Run]:
        """Newest first; `before` is the (created_at, run_id) of the last run of a page.
        `user_id` None lists every user's runs (operators; `owner` then filters by user):
        a keyset walk of `runs_created`, as a user's is of `runs_user_created`, so a page
        costs the same on the millionth run as on the first."""
        who = "user_id = $1" if user_id is not None else "($1::text IS NULL OR user_id = $1)"
        rows = await self.db.fetch(
            f"""SELECT {RUN_COLUMNS} FROM runs
                WHERE {who}
                  AND ($2::timestamptz IS NULL OR (created_at, run_id) < ($2, $3::uuid))
                  AND ($4::text IS NULL OR status = $4)
                  AND ($5::text IS NULL OR thread_id = $5)
                  AND ($7::text IS NULL OR agent = $7)
                ORDER BY created_at DESC, run_id DESC LIMIT $6""",
            user_id if user_id is not None else owner,
            before[0] if before else None,
            uuid.UUID(before[1]) if before else None,
            None if status is None else str(status),
            thread_id,
            limit,
            agent,
        )
        return [run_of(r) for r in rows]

    async def any_run(self, run_id: str) -> Run | None:
        """A run of any user (operators only: `api.ops`)."""
        row = await self.db.fetchrow(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1", uuid.UUID(run_id)
        )
        return None if row is None else run_of(row)

    async def cancel_queued(self, run_id: str, user_id: str) -> Run | None:
        """queued or waiting -> cancelled, archiving the `cancelled` event in the same
        transaction. Returns the cancelled run, or None when the run was neither."""
        async with self.db.conn() as c, c.transaction():
            row = await c.fetchrow(CANCEL_QUEUED, uuid.UUID(run_id), user_id)
            if row is None:
                return None
            run = run_of(row)
            event = {"type": "cancelled", "reason": "user"}
            data = orjson.dumps({"seq": run.last_seq, **event})
            await archive(c, run_id, [Event(seq=run.last_seq, type=event["type"], data=data)])
        return run

    async def request_cancel(self, run_id: str, user_id: str) -> Run | None:
        """Mark a running run for cancellation (the worker ends it). None if not running."""
        row = await self.db.fetchrow(
            f"""UPDATE runs SET cancel_requested = true, updated_at = now()
                WHERE run_id = $1 AND user_id = $2 AND status = 'running'
                RETURNING {RUN_COLUMNS}""",
            uuid.UUID(run_id),
            user_id,
        )
        return None if row is None else run_of(row)

    async def queue_items(self, run_ids: Sequence[str]) -> list[QueuedRun]:
        """What the queue entries of these runs carry (their user, their priority), for the
        paths that queue a run again by its id alone; a run not found is left out."""
        if not run_ids:
            return []
        rows = await self.db.fetch(
            "SELECT run_id, user_id, priority FROM runs WHERE run_id = ANY($1::uuid[])",
            [uuid.UUID(r) for r in run_ids],
        )
        found = {
            str(row["run_id"]): QueuedRun(str(row["run_id"]), row["user_id"], row["priority"])
            for row in rows
        }
        return [found[r] for r in run_ids if r in found]

    async def next_in_thread(self, run_id: str) -> str | None:
        """The oldest queued run of `run_id`'s thread (to enqueue when a run ended outside a
        worker: a waiting run cancelled or timed out)."""
        async with self.db.conn() as c:
            return await self.threads.next_of_thread(c, run_id)

    async def events_after(self, run_id: str, after_seq: int, limit: int = 1000) -> list[Event]:
        rows = await self.db.fetch(
            EVENTS_AFTER,
            uuid.UUID(run_id),
            after_seq,
            limit,
        )
        return [event_of(r) for r in rows]

    # -- the worker side (fenced by attempt) ---------------------------------------------------
    async def claim(self, run_id: str, *, reclaim: bool) -> Run | None:
        """Start an attempt: attempt + 1 and status running. A fresh delivery claims only a
        queued run (a duplicate entry of a running run is not executed twice); a re-claimed
        entry (its lease expired) may also take over a running run."""
        allowed = ["queued", "running"] if reclaim else ["queued"]
        try:
            row = await self.db.fetchrow(
                f"""UPDATE runs SET status = 'running', attempt = attempt + 1,
                        started_at = coalesce(started_at, now()), updated_at = now()
                    WHERE run_id = $1 AND status = ANY($2::text[])
                      AND {THREAD_TURN} AND {NOT_EARLY}
                    RETURNING {RUN_COLUMNS}""",
                uuid.UUID(run_id),
                allowed,
            )
        except asyncpg.exceptions.UniqueViolationError:
            return None  # its thread is busy: the running run's end enqueues the next one
        return None if row is None else run_of(row)

    async def checkpoint(
        self,
        run_id: str,
        attempt: int,
        events: Sequence[Event],
        step: int | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Archive events (and optionally a step's state) under the attempt's fence."""
        async with self.db.conn() as c, c.transaction():
            await _fence(c, run_id, attempt)
            await archive(c, run_id, events)
            if step is not None:
                await c.execute(
                    """INSERT INTO run_checkpoints (run_id, step, attempt, state)
                       VALUES ($1, $2, $3, $4)
                       ON CONFLICT (run_id, step) DO UPDATE
                       SET state = excluded.state, attempt = excluded.attempt,
                           created_at = now()""",
                    uuid.UUID(run_id),
                    step,
                    attempt,
                    state or {},
                )
            if events:
                await c.execute(
                    "UPDATE runs SET last_seq = greatest(last_seq, $2), updated_at = now() "
                    "WHERE run_id = $1",
                    uuid.UUID(run_id),
                    events[-1].seq,
                )

    async def last_checkpoint(self, run_id: str) -> Checkpoint | None:
        row = await self.db.fetchrow(
            "SELECT step, state FROM run_checkpoints WHERE run_id = $1 ORDER BY step DESC LIMIT 1",
            uuid.UUID(run_id),
        )
        return None if row is None else checkpoint_of(row)

    async def last_archived_event(self, run_id: str, skip_types: frozenset[str]) -> Event | None:
        row = await self.db.fetchrow(
            f"SELECT seq, type, data FROM run_events WHERE {OF_RUN} "
            "AND type <> ALL($2::text[]) ORDER BY seq DESC LIMIT 1",
            uuid.UUID(run_id),
            sorted(skip_types),
        )
        return None if row is None else event_of(row)

    async def finish(self, f: Finishing, messages: Sequence[dict[str, Any]] = ()) -> str | None:
        """Commit a thread's run's terminal state, its last events and its new thread messages
        in one transaction, fenced on the attempt and the log's seq. Raises LeaseLost when
        another attempt owns the run. Returns the thread's next queued run, to enqueue. An
        earlier try that committed (its reply lost) counts as committed. (A run outside a
        thread ends through `BatchRepo.finish_many`.)"""
        async with self.db.conn() as c, c.transaction():
            if await commit_end(c, f):
                if messages:
                    await self.threads.add_messages(c, f.run_id, messages)
            else:
                refused = await settle_end(c, f)
                if refused is not None:
                    raise refused
            return await self.threads.next_of_thread(c, f.run_id)

    async def requeue(self, run_id: str, attempt: int | None, events: Sequence[Event]) -> bool:
        """running -> queued (a hand-over, or the reconciler). With `attempt`, fenced on it."""
        async with self.db.conn() as c, c.transaction():
            if attempt is not None:
                try:
                    await _fence(c, run_id, attempt)
                except LeaseLost:
                    return False
            await archive(c, run_id, events)
            done = await c.execute(
                """UPDATE runs SET status = 'queued', updated_at = now(),
                       last_seq = greatest(last_seq, $3)
                   WHERE run_id = $1 AND ($2::int IS NULL OR attempt = $2)
                     AND status = ANY($4::text[])""",
                uuid.UUID(run_id),
                attempt,
                events[-1].seq if events else 0,
                _status_list(Transition.REQUEUE),
            )
        return bool(done.endswith(" 1"))

    async def active_runs(
        self, queued_for: float, running_silent_for: float, limit: int = 500
    ) -> list[Run]:
        """Reconciler candidates, oldest first: runs queued for over `queued_for` seconds (a
        delayed one only once it has been due that long), and running runs whose Postgres
        heartbeat is older than `running_silent_for`."""
        rows = await self.db.fetch(
            f"""SELECT {RUN_COLUMNS} FROM runs
                WHERE (status = 'queued' AND updated_at < now() - make_interval(secs => $1)
                       AND (start_at IS NULL OR start_at < now() - make_interval(secs => $1)))
                   OR (status = 'running' AND updated_at < now() - make_interval(secs => $2))
                ORDER BY updated_at LIMIT $3""",
            queued_for,
            running_silent_for,
            limit,
        )
        return [run_of(r) for r in rows]

    async def scheduled(
        self, ahead: float, after: tuple[datetime, str] | None = None, limit: int = 1000
    ) -> list[tuple[QueuedRun, datetime]]:
        """Queued runs not due for over `ahead` seconds yet, by (start_at, run_id) after
        `after` (a keyset walk of `runs_scheduled`): the reconciler puts those Redis lost back
        in the delayed set."""
        rows = await self.db.fetch(
            """SELECT run_id, user_id, priority, start_at FROM runs
               WHERE status = 'queued' AND start_at IS NOT NULL
                 AND start_at > now() + make_interval(secs => $1)
                 AND ($2::timestamptz IS NULL OR (start_at, run_id) > ($2, $3::uuid))
               ORDER BY start_at, run_id LIMIT $4""",
            ahead,
            after[0] if after else None,
            uuid.UUID(after[1]) if after else None,
            limit,
        )
        return [scheduled_of(r) for r in rows]

    async def scheduled_count(self, ahead: float) -> int:
        """How many queued runs are not due for over `ahead` seconds yet."""
        n = await self.db.fetchval(
            """SELECT count(*) FROM runs WHERE status = 'queued' AND start_at IS NOT NULL
               AND start_at > now() + make_interval(secs => $1)""",
            ahead,
        )
        return int(n or 0)

    async def touch(self, run_ids: Sequence[str]) -> list[str]:
        """Heartbeat in Postgres: keeps live runs out of the reconciler's view. Returns the
        runs among them whose cancellation was requested (the path that needs no Redis)."""
        if not run_ids:
            return []
        rows = await self.db.fetch(TOUCH, [uuid.UUID(r) for r in run_ids])
        return [str(r["run_id"]) for r in rows if r["cancel_requested"]]
