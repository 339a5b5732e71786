"""Postgres, the truth: runs, their archived events and checkpoints (API keys and spend live
in `store_users`, threads in `store_threads`, grouped submits in `store_submit`, the worker's
many-run statements in `store_batches`, shared row shapes in `store_rows`; `Store` is all of
them).

Every status write is a compare-and-set on the old status (from the transition table in
`shared.models`) and, for a worker's writes, on the attempt it holds: a worker that lost its
lease finds its writes refused (`LeaseLost`). asyncpg records become models here and nowhere
else. asyncpg errors are mapped to `Unavailable` at this boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.agents.base import Checkpoint
from shared.config import Settings
from shared.errors import LeaseLost
from shared.models import Event, Run, RunStatus, Transition, sources
from shared.store_base import PG_DOWN, StoreBase, connect
from shared.store_batches import BatchQueries, Finishing
from shared.store_events import EventLog
from shared.store_rows import RUN_COLUMNS, THREAD_TURN, run_of
from shared.store_submit import SubmitQueries
from shared.store_threads import ThreadQueries
from shared.store_users import ApiKey, KeyQueries, SpendQueries, hash_key, new_api_key


def _status_list(move: Transition) -> list[str]:
    return sorted(str(s) for s in sources(move))


@dataclass(frozen=True)
class NewRun:
    user_id: str
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    thread_id: str | None = None


class Store(KeyQueries, ThreadQueries, SpendQueries, SubmitQueries, BatchQueries):
    """All Postgres access. Built with `await Store.open(settings, app_name)`; close with
    `await store.close()`. Every call acquires a pooled connection with a timeout."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        super().__init__(pool, settings)
        self.log = EventLog(self)

    # -- runs: API side ----------------------------------------------------------------------
    async def insert_run(self, new: NewRun, conn: asyncpg.Connection | None = None) -> Run:
        """Insert a queued run; on `conn` when given (a caller's transaction)."""
        if conn is not None:
            return await self._insert_run(conn, new)
        async with self.conn() as c:
            return await self._insert_run(c, new)

    async def _insert_run(self, c: asyncpg.Connection, new: NewRun) -> Run:
        row = await c.fetchrow(
            f"""INSERT INTO runs (run_id, user_id, thread_id, agent, input, params, metadata,
                                  status)
                VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued')
                RETURNING {RUN_COLUMNS}""",
            uuid.uuid4(),
            new.user_id,
            new.thread_id,
            new.agent,
            new.input,
            new.params,
            new.metadata,
        )
        return run_of(row)

    async def get_run(self, run_id: str, user_id: str | None = None) -> Run | None:
        async with self.conn() as c:
            row = await c.fetchrow(
                f"SELECT {RUN_COLUMNS} FROM runs "
                "WHERE run_id = $1 AND ($2::text IS NULL OR user_id = $2)",
                uuid.UUID(run_id),
                user_id,
            )
        return None if row is None else run_of(row)

    async def list_runs(
        self,
        user_id: str,
        *,
        limit: int,
        before: tuple[datetime, str] | None = None,
        status: RunStatus | None = None,
        thread_id: str | None = None,
    ) -> list[Run]:
        """Newest first; `before` is the (created_at, run_id) of the last run of a page."""
        async with self.conn() as c:
            rows = await c.fetch(
                f"""SELECT {RUN_COLUMNS} FROM runs
                    WHERE user_id = $1
                      AND ($2::timestamptz IS NULL OR (created_at, run_id) < ($2, $3::uuid))
                      AND ($4::text IS NULL OR status = $4)
                      AND ($5::text IS NULL OR thread_id = $5)
                    ORDER BY created_at DESC, run_id DESC LIMIT $6""",
                user_id,
                before[0] if before else None,
                uuid.UUID(before[1]) if before else None,
                None if status is None else str(status),
                thread_id,
                limit,
            )
        return [run_of(r) for r in rows]

    async def cancel_queued(self, run_id: str, user_id: str) -> Run | None:
        """queued -> cancelled, archiving the `cancelled` event in the same transaction.
        Returns the cancelled run, or None when the run was not queued."""
        return await self._end_unowned(
            run_id,
            "status = 'cancelled', cancel_requested = true",
            {"type": "cancelled", "reason": "user"},
            allowed=["queued"],
            user_id=user_id,
        )

    async def request_cancel(self, run_id: str, user_id: str) -> Run | None:
        """Mark a running run for cancellation (the worker ends it). None if not running."""
        async with self.conn() as c:
            row = await c.fetchrow(
                f"""UPDATE runs SET cancel_requested = true, updated_at = now()
                    WHERE run_id = $1 AND user_id = $2 AND status = 'running'
                    RETURNING {RUN_COLUMNS}""",
                uuid.UUID(run_id),
                user_id,
            )
        return None if row is None else run_of(row)

    async def events_after(self, run_id: str, after_seq: int, limit: int = 1000) -> list[Event]:
        async with self.conn() as c:
            rows = await c.fetch(
                "SELECT seq, type, data FROM run_events WHERE run_id = $1 AND seq > $2 "
                "ORDER BY seq LIMIT $3",
                uuid.UUID(run_id),
                after_seq,
                limit,
            )
        return [Event(seq=r["seq"], type=r["type"], data=bytes(r["data"])) for r in rows]

    # -- runs: worker side (fenced by attempt) ------------------------------------------------
    async def claim(self, run_id: str, *, reclaim: bool) -> Run | None:
        """Start an attempt: attempt + 1 and status running. A fresh delivery claims only a
        queued run (a duplicate entry of a running run is not executed twice); a re-claimed
        entry (its lease expired) may also take over a running run."""
        allowed = ["queued", "running"] if reclaim else ["queued"]
        try:
            async with self.conn() as c:
                row = await c.fetchrow(
                    f"""UPDATE runs SET status = 'running', attempt = attempt + 1,
                            started_at = coalesce(started_at, now()), updated_at = now()
                        WHERE run_id = $1 AND status = ANY($2::text[])
                          AND {THREAD_TURN}
                        RETURNING {RUN_COLUMNS}""",
                    uuid.UUID(run_id),
                    allowed,
                )
        except asyncpg.exceptions.UniqueViolationError:
            return None  # its thread is busy: the running run's end enqueues the next one
        return None if row is None else run_of(row)

    async def archive(self, c: asyncpg.Connection, run_id: str, events: Sequence[Event]) -> None:
        if events:
            await c.executemany(
                "INSERT INTO run_events (run_id, seq, type, data) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (run_id, seq) DO NOTHING",
                [(uuid.UUID(run_id), e.seq, e.type, e.data) for e in events],
            )

    async def _fence(self, c: asyncpg.Connection, run_id: str, attempt: int) -> None:
        """Lock the run row and refuse unless this attempt still owns it (running)."""
        ok = await c.fetchval(
            "SELECT 1 FROM runs WHERE run_id = $1 AND attempt = $2 AND status = 'running' "
            "FOR UPDATE",
            uuid.UUID(run_id),
            attempt,
        )
        if ok is None:
            raise LeaseLost(f"run {run_id} attempt {attempt} no longer owns the run")

    async def checkpoint(
        self,
        run_id: str,
        attempt: int,
        events: Sequence[Event],
        step: int | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Archive events (and optionally a step's state) under the attempt's fence."""
        async with self.conn() as c, c.transaction():
            await self._fence(c, run_id, attempt)
            await self.archive(c, run_id, events)
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
        async with self.conn() as c:
            row = await c.fetchrow(
                "SELECT step, state FROM run_checkpoints WHERE run_id = $1 "
                "ORDER BY step DESC LIMIT 1",
                uuid.UUID(run_id),
            )
        return None if row is None else Checkpoint(step=row["step"], state=row["state"])

    async def last_archived_event(self, run_id: str, skip_types: frozenset[str]) -> Event | None:
        async with self.conn() as c:
            row = await c.fetchrow(
                "SELECT seq, type, data FROM run_events WHERE run_id = $1 "
                "AND type <> ALL($2::text[]) ORDER BY seq DESC LIMIT 1",
                uuid.UUID(run_id),
                sorted(skip_types),
            )
        return None if row is None else Event(seq=row["seq"], type=row["type"], data=row["data"])

    async def finish(self, f: Finishing, messages: Sequence[dict[str, Any]] = ()) -> str | None:
        """Commit a run of a thread's terminal state, its last events and its new thread
        messages in one transaction, fenced on the attempt and the log's seq. Raises
        LeaseLost when another attempt owns the run. Returns the thread's next queued run, to
        enqueue. An earlier try that committed (its reply lost) counts as committed."""
        async with self.conn() as c, c.transaction():
            if await self._finish_statement(c, f):
                if messages:
                    await self._add_messages(c, f.run_id, messages)
            else:
                refused = await self._settle_finish(c, f)
                if refused is not None:
                    raise refused
            return await self.next_of_thread(c, f.run_id)

    async def fail_unstarted(self, run_id: str, error: dict[str, Any]) -> Run | None:
        """Fail a run that no attempt holds (dead-lettered), archiving an `error` event."""
        return await self._end_unowned(
            run_id,
            "status = 'failed', error = $4",
            {"type": "error", **error},
            allowed=_status_list(Transition.FAIL),
            extra=(error,),
        )

    async def _end_unowned(
        self,
        run_id: str,
        assignments: str,
        event: dict[str, Any],
        *,
        allowed: list[str],
        user_id: str | None = None,
        extra: tuple[Any, ...] = (),
    ) -> Run | None:
        """End a run no worker holds (`assignments` sets its terminal status) and archive
        its terminal `event` as the next seq, in one transaction. None if not in `allowed`."""
        async with self.conn() as c, c.transaction():
            row = await c.fetchrow(
                f"""UPDATE runs SET {assignments}, finished_at = now(), updated_at = now(),
                        last_seq = last_seq + 1
                    WHERE run_id = $1 AND ($2::text IS NULL OR user_id = $2)
                      AND status = ANY($3::text[])
                    RETURNING {RUN_COLUMNS}""",
                uuid.UUID(run_id),
                user_id,
                allowed,
                *extra,
            )
            if row is None:
                return None
            run = run_of(row)
            await c.execute(
                "INSERT INTO run_events (run_id, seq, type, data) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING",
                uuid.UUID(run_id),
                run.last_seq,
                event["type"],
                orjson.dumps({"seq": run.last_seq, **event}),
            )
        return run

    async def requeue(self, run_id: str, attempt: int | None, events: Sequence[Event]) -> bool:
        """running -> queued (a hand-over, or the reconciler). With `attempt`, fenced on it."""
        async with self.conn() as c, c.transaction():
            if attempt is not None:
                try:
                    await self._fence(c, run_id, attempt)
                except LeaseLost:
                    return False
            await self.archive(c, run_id, events)
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
        """Reconciler candidates, oldest first: runs queued for over `queued_for` seconds, and
        running runs whose Postgres heartbeat is older than `running_silent_for`."""
        async with self.conn() as c:
            rows = await c.fetch(
                f"""SELECT {RUN_COLUMNS} FROM runs
                    WHERE (status = 'queued' AND updated_at < now() - make_interval(secs => $1))
                       OR (status = 'running'
                           AND updated_at < now() - make_interval(secs => $2))
                    ORDER BY updated_at LIMIT $3""",
                queued_for,
                running_silent_for,
                limit,
            )
        return [run_of(r) for r in rows]

    async def touch(self, run_ids: Sequence[str]) -> list[str]:
        """Heartbeat in Postgres: keeps live runs out of the reconciler's view. Returns the
        runs among them whose cancellation was requested (the path that needs no Redis)."""
        if not run_ids:
            return []
        async with self.conn() as c:
            rows = await c.fetch(
                "UPDATE runs SET updated_at = now() WHERE run_id = ANY($1::uuid[]) "
                "AND status = 'running' RETURNING run_id, cancel_requested",
                [uuid.UUID(r) for r in run_ids],
            )
        return [str(r["run_id"]) for r in rows if r["cancel_requested"]]


__all__ = [
    "PG_DOWN",
    "ApiKey",
    "Finishing",
    "NewRun",
    "Store",
    "StoreBase",
    "connect",
    "hash_key",
    "new_api_key",
]
