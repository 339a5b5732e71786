"""Postgres, the truth: runs, their archived events and checkpoints (API keys, spend and
threads live in `store_users` and `store_threads`; `Store` is all of them).

Every status write is a compare-and-set on the old status (from the transition table in
`shared.models`) and, for a worker's writes, on the attempt it holds: a worker that lost its
lease finds its writes refused (`LeaseLost`). asyncpg records become models here and nowhere
else. asyncpg errors are mapped to `Unavailable` at this boundary.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.agents.base import Checkpoint
from shared.errors import LeaseLost, Unavailable
from shared.models import Event, Run, RunStatus, Transition, sources
from shared.store_base import PG_DOWN, StoreBase, connect
from shared.store_submit import SubmitQueries
from shared.store_threads import ThreadQueries
from shared.store_users import ApiKey, KeyQueries, SpendQueries, hash_key, new_api_key

_RUN_COLUMNS = (
    "run_id, user_id, thread_id, agent, input, params, metadata, status, attempt, output, "
    "error, usage, cost_usd, last_seq, cancel_requested, created_at, started_at, finished_at, "
    "updated_at"
)


def _status_list(move: Transition) -> list[str]:
    return sorted(str(s) for s in sources(move))


def _run(record: asyncpg.Record) -> Run:
    data = dict(record)
    data["run_id"] = str(data["run_id"])
    return Run.model_validate(data)


@dataclass(frozen=True)
class NewRun:
    user_id: str
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    thread_id: str | None = None


@dataclass(frozen=True)
class Finishing:
    """One run's terminal write, for `Store.finish_many` (runs outside a thread)."""

    run_id: str
    attempt: int
    move: Transition
    events: Sequence[Event]
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0


_TARGETS = {
    Transition.SUCCEED: "succeeded",
    Transition.FAIL: "failed",
    Transition.CANCEL: "cancelled",
}


def _qualified(columns: str) -> str:
    """`a, b` -> `runs.a, runs.b` (a RETURNING next to a FROM that has a run_id too)."""
    return ", ".join(f"runs.{c.strip()}" for c in columns.split(","))


def _rounds(keys: Sequence[str]) -> list[list[int]]:
    """Split item indexes into rounds where no key repeats; a repeated key goes to a later
    round, so each round can be one statement with one outcome per row."""
    rounds: list[list[int]] = []
    seen: list[set[str]] = []
    for i, key in enumerate(keys):
        for r, keys_of_round in enumerate(seen):
            if key not in keys_of_round:
                keys_of_round.add(key)
                rounds[r].append(i)
                break
        else:
            seen.append({key})
            rounds.append([i])
    return rounds


# A run in a thread is claimed only when no earlier run of its thread is still queued (the
# partial unique index allows one running run per thread; this keeps their order).
_THREAD_TURN = """NOT EXISTS (
    SELECT 1 FROM runs earlier
    WHERE runs.thread_id IS NOT NULL
      AND earlier.user_id = runs.user_id
      AND earlier.thread_id = runs.thread_id
      AND earlier.status = 'queued'
      AND (earlier.created_at, earlier.run_id) < (runs.created_at, runs.run_id))"""


class Store(KeyQueries, ThreadQueries, SpendQueries, SubmitQueries):
    """All Postgres access. Built with `await Store.open(settings, app_name)`; close with
    `await store.close()`. Every call acquires a pooled connection with a timeout."""

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
                RETURNING {_RUN_COLUMNS}""",
            uuid.uuid4(),
            new.user_id,
            new.thread_id,
            new.agent,
            new.input,
            new.params,
            new.metadata,
        )
        return _run(row)

    async def delete_queued_run(self, run_id: str) -> None:
        """Undo an insert whose queue entry could not be added (the submit answers 503)."""
        async with self.conn() as c:
            await c.execute(
                "DELETE FROM runs WHERE run_id = $1 AND status = 'queued' AND attempt = 0",
                uuid.UUID(run_id),
            )

    async def get_run(self, run_id: str, user_id: str | None = None) -> Run | None:
        async with self.conn() as c:
            row = await c.fetchrow(
                f"SELECT {_RUN_COLUMNS} FROM runs "
                "WHERE run_id = $1 AND ($2::text IS NULL OR user_id = $2)",
                uuid.UUID(run_id),
                user_id,
            )
        return None if row is None else _run(row)

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
                f"""SELECT {_RUN_COLUMNS} FROM runs
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
        return [_run(r) for r in rows]

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
                    RETURNING {_RUN_COLUMNS}""",
                uuid.UUID(run_id),
                user_id,
            )
        return None if row is None else _run(row)

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
                          AND {_THREAD_TURN}
                        RETURNING {_RUN_COLUMNS}""",
                    uuid.UUID(run_id),
                    allowed,
                )
        except asyncpg.exceptions.UniqueViolationError:
            return None  # its thread is busy: the running run's end enqueues the next one
        return None if row is None else _run(row)

    @asynccontextmanager
    async def held(self, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        """`conn()`, or the caller's own connection (a worker's batch lane keeps one: no
        acquire and no reset round trip per statement), with the same error mapping."""
        if conn is None:
            async with self.conn() as c:
                yield c
            return
        try:
            yield conn
        except PG_DOWN as exc:
            raise Unavailable(f"postgres unavailable: {type(exc).__name__}") from exc

    async def claim_many(
        self, items: Sequence[tuple[str, bool]], conn: asyncpg.Connection | None = None
    ) -> list[Run | None]:
        """`claim` for many (run_id, reclaim) at once, in one statement: the rows are locked in
        run_id order (two workers' batches cannot deadlock on each other), then claimed.
        One outcome per item, in order. A run named twice is claimed by its first item only
        here, the later ones in a following statement (as if they had come after)."""
        out: list[Run | None] = [None] * len(items)
        for round_ in _rounds([run_id for run_id, _ in items]):
            try:
                async with self.held(conn) as c:
                    rows = await c.fetch(
                        f"""WITH req AS (
                               SELECT * FROM unnest($1::uuid[], $2::bool[]) AS r(run_id, reclaim)
                           ), locked AS (
                               SELECT runs.run_id FROM runs JOIN req USING (run_id)
                               WHERE (runs.status = 'queued'
                                      OR (req.reclaim AND runs.status = 'running'))
                                 AND {_THREAD_TURN}
                               ORDER BY runs.run_id
                               FOR UPDATE OF runs
                           )
                           UPDATE runs SET status = 'running', attempt = attempt + 1,
                               started_at = coalesce(started_at, now()), updated_at = now()
                           FROM locked WHERE runs.run_id = locked.run_id
                           RETURNING {_qualified(_RUN_COLUMNS)}""",
                        [uuid.UUID(items[i][0]) for i in round_],
                        [items[i][1] for i in round_],
                    )
            except asyncpg.PostgresError:
                # A thread's run collides with its running one (unique index), or a deadlock
                # with a statement outside these batches: claim each alone, as before.
                for i in round_:
                    out[i] = await self.claim(items[i][0], reclaim=items[i][1])
                continue
            claimed = {str(r["run_id"]): r for r in rows}
            for i in round_:
                row = claimed.get(items[i][0])
                out[i] = None if row is None else _run(row)
        return out

    async def finish_many(
        self, items: Sequence[Finishing], conn: asyncpg.Connection | None = None
    ) -> list[LeaseLost | None]:
        """`finish` (outside a thread) of many runs in one statement: each run's archive and
        terminal state are written only if its attempt still owns it. One outcome per item:
        None (committed) or LeaseLost for that run alone. A statement error (not an outage)
        falls back to one statement per run, so one bad run cannot fail the others."""
        out: list[LeaseLost | None] = [None] * len(items)
        for round_ in _rounds([f.run_id for f in items]):
            batch = [items[i] for i in round_]
            ev_runs: list[uuid.UUID] = []
            ev_seqs: list[int] = []
            ev_types: list[str] = []
            ev_data: list[bytes] = []
            for f in batch:
                rid = uuid.UUID(f.run_id)
                for e in f.events:
                    ev_runs.append(rid)
                    ev_seqs.append(e.seq)
                    ev_types.append(e.type)
                    ev_data.append(e.data)
            try:
                async with self.held(conn) as c:
                    rows = await c.fetch(
                        """WITH req AS (
                               SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[],
                                   $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::float8[],
                                   $8::int[])
                               AS r(run_id, attempt, target, output, error, usage, cost, seq)
                           ), fence AS (
                               SELECT runs.run_id FROM runs JOIN req
                                 ON runs.run_id = req.run_id AND runs.attempt = req.attempt
                               WHERE runs.status = 'running'
                               ORDER BY runs.run_id
                               FOR UPDATE OF runs
                           ), archived AS (
                               INSERT INTO run_events (run_id, seq, type, data)
                               SELECT e.run_id, e.seq, e.type, e.data
                               FROM unnest($9::uuid[], $10::int[], $11::text[], $12::bytea[])
                                   AS e(run_id, seq, type, data)
                               WHERE e.run_id IN (SELECT run_id FROM fence)
                               ON CONFLICT (run_id, seq) DO NOTHING
                           )
                           UPDATE runs SET status = req.target, output = req.output,
                               error = req.error, usage = coalesce(req.usage, runs.usage),
                               cost_usd = req.cost, finished_at = now(), updated_at = now(),
                               last_seq = greatest(runs.last_seq, req.seq)
                           FROM req
                           WHERE runs.run_id = req.run_id
                             AND runs.run_id IN (SELECT run_id FROM fence)
                           RETURNING runs.run_id""",
                        [uuid.UUID(f.run_id) for f in batch],
                        [f.attempt for f in batch],
                        [_TARGETS[f.move] for f in batch],
                        [f.output for f in batch],
                        [f.error for f in batch],
                        [f.usage for f in batch],
                        [f.cost_usd for f in batch],
                        [f.events[-1].seq if f.events else 0 for f in batch],
                        ev_runs,
                        ev_seqs,
                        ev_types,
                        ev_data,
                    )
            except asyncpg.PostgresError:
                for i in round_:
                    f = items[i]
                    try:
                        await self.finish(
                            f.run_id,
                            f.attempt,
                            f.move,
                            f.events,
                            output=f.output,
                            error=f.error,
                            usage=f.usage,
                            cost_usd=f.cost_usd,
                            thread=False,
                        )
                    except LeaseLost as exc:
                        out[i] = exc
                continue
            done = {str(r["run_id"]) for r in rows}
            for i in round_:
                f = items[i]
                if f.run_id not in done:
                    out[i] = LeaseLost(f"run {f.run_id} attempt {f.attempt} no longer owns the run")
        return out

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

    async def finish(
        self,
        run_id: str,
        attempt: int,
        move: Transition,
        events: Sequence[Event],
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        cost_usd: float = 0.0,
        messages: Sequence[dict[str, Any]] = (),
        thread: bool = True,
    ) -> str | None:
        """Commit the terminal state, the rest of the event archive and the run's new thread
        messages in one transaction, fenced on the attempt. Raises LeaseLost when another
        attempt owns the run. Returns the next queued run of its thread, to enqueue."""
        target = _TARGETS[move]
        args = (run_id, attempt, target, events, output, error, usage, cost_usd)
        if not thread:
            async with self.conn() as c:  # one statement: its own transaction, one round trip
                await self._finish_statement(c, *args)
            return None
        async with self.conn() as c, c.transaction():
            await self._finish_statement(c, *args)
            if messages:
                await self._add_messages(c, run_id, messages)
            return await self.next_of_thread(c, run_id)

    async def _finish_statement(
        self,
        c: asyncpg.Connection,
        run_id: str,
        attempt: int,
        target: str,
        events: Sequence[Event],
        output: Any,
        error: dict[str, Any] | None,
        usage: dict[str, Any] | None,
        cost_usd: float,
    ) -> None:
        """The terminal write as one statement: the fence row is locked, the archive and the
        terminal state written only if this attempt still owns the run (else LeaseLost)."""
        row = await c.fetchval(
            """WITH fence AS (
                   SELECT run_id FROM runs
                   WHERE run_id = $1 AND attempt = $2 AND status = 'running' FOR UPDATE
               ), archived AS (
                   INSERT INTO run_events (run_id, seq, type, data)
                   SELECT $1, e.seq, e.type, e.data
                   FROM unnest($9::int[], $10::text[], $11::bytea[]) AS e(seq, type, data)
                   WHERE EXISTS (SELECT 1 FROM fence)
                   ON CONFLICT (run_id, seq) DO NOTHING
               )
               UPDATE runs SET status = $3, output = $4, error = $5,
                   usage = coalesce($6, usage), cost_usd = $7, finished_at = now(),
                   updated_at = now(), last_seq = greatest(last_seq, $8)
               WHERE run_id = (SELECT run_id FROM fence)
               RETURNING 1""",
            uuid.UUID(run_id),
            attempt,
            target,
            output,
            error,
            usage,
            cost_usd,
            events[-1].seq if events else 0,
            [e.seq for e in events],
            [e.type for e in events],
            [e.data for e in events],
        )
        if row is None:
            raise LeaseLost(f"run {run_id} attempt {attempt} no longer owns the run")

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
                    RETURNING {_RUN_COLUMNS}""",
                uuid.UUID(run_id),
                user_id,
                allowed,
                *extra,
            )
            if row is None:
                return None
            run = _run(row)
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

    async def active_runs(self, older_than_seconds: float, limit: int = 500) -> list[Run]:
        """Queued or running runs not updated for a while (reconciler candidates)."""
        async with self.conn() as c:
            rows = await c.fetch(
                f"""SELECT {_RUN_COLUMNS} FROM runs
                    WHERE status IN ('queued', 'running')
                      AND updated_at < now() - make_interval(secs => $1)
                    ORDER BY updated_at LIMIT $2""",
                older_than_seconds,
                limit,
            )
        return [_run(r) for r in rows]

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
