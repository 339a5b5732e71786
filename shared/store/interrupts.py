"""A run's interrupts (human in the loop): the attempt's move to `waiting` with its
`interrupt` event, the owner's resume, the deadline that answers with a default or fails the
run, and the answers a resumed attempt replays to its agent.

Each is one transaction that locks the run's row first, so a resume, a cancel and a deadline
racing each other see one order: the first wins, the others find the run moved on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shared.errors import Conflict, LeaseLost, NotFound
from shared.models import Event, encode_event
from shared.store.counters import count_ended
from shared.store.pool import Database
from shared.store.rows import RUN_COLUMNS, Asking, run_of
from shared.store.runs import archive
from shared.store.threads import ThreadRepo
from shared.store.webhooks import deliveries_of

# The run back in the queue: the interrupt closed, and its start moved on by the time it
# waited (a run's time limit counts the time it ran, not the time a person took).
RESUME_RUN = """UPDATE runs SET status = 'queued', interrupt = NULL, interrupt_deadline = NULL,
        started_at = started_at + (now() - coalesce(waiting_since, now())),
        waiting_since = NULL, updated_at = now()
    WHERE run_id = $1 AND status = 'waiting'"""

# running -> waiting: the interrupt recorded on the run, the attempt's figures, and the run's
# `run.waiting` webhook delivery (keeping the run's row as it waits: the pending interrupt).
WAIT_RUN = f"""WITH waited AS (
        UPDATE runs SET status = 'waiting', waiting_since = now(),
            interrupt_deadline = now() + make_interval(secs => $2::float8),
            interrupt = jsonb_build_object(
                'interrupt_id', $3::text, 'payload', $4::jsonb, 'asked_at', now(),
                'deadline', now() + make_interval(secs => $2::float8)),
            last_seq = $5, event_bytes = event_bytes + $6,
            usage = coalesce($7, usage), cost_usd = $8, updated_at = now()
        WHERE run_id = $1
        RETURNING run_id, status, webhook_url, to_jsonb(runs) AS snapshot
    ), {deliveries_of("waited", snapshot=True)}
    SELECT 1 FROM waited"""

# waiting -> failed (its deadline passed with no default), counted, its webhook's delivery
# recorded; the `error` event is the next seq, archived by the same transaction.
TIME_OUT_RUN = f"""WITH finished AS (
        UPDATE runs SET status = 'failed', error = $2, interrupt = NULL,
            interrupt_deadline = NULL, finished_at = now(), updated_at = now(),
            last_seq = last_seq + 1
        WHERE run_id = $1 AND status = 'waiting'
        RETURNING {RUN_COLUMNS}
    ), {count_ended("(SELECT status, 0::float8 AS cost_delta FROM finished) AS ended")},
    {deliveries_of("finished")}
    SELECT {RUN_COLUMNS} FROM finished"""

TIMEOUT_ERROR = {
    "code": "interrupt_timeout",
    "message": "nobody answered the run's interrupt before its deadline",
}


@dataclass(frozen=True)
class Resumed:
    """A resume's outcome. `replayed`: this interrupt had been answered with the same value
    already (a retried resume): nothing was written, and the run is not queued again."""

    run_id: str
    interrupt_id: str
    status: str
    replayed: bool


@dataclass(frozen=True)
class Expired:
    """A deadline the reconciler handled: the run queued with the default (`resumed`), or
    failed with its `error` event (`ended`), and the thread's next run to enqueue."""

    run_id: str
    resumed: bool
    ended: Event | None = None
    next_run: str | None = None


WaitOutcome = Literal["waiting", "cancel"]


class InterruptRepo:
    def __init__(self, db: Database, threads: ThreadRepo) -> None:
        self.db = db
        self.threads = threads

    # -- the worker ----------------------------------------------------------------------------
    async def wait(self, a: Asking) -> WaitOutcome:
        """running -> waiting: archive the attempt's last events (its `interrupt` event last),
        record the interrupt and the run's `run.waiting` webhook, and release the run, fenced
        on the attempt and the log's last seq. `cancel`: a cancel was requested first (nothing
        written: the attempt ends the run cancelled). An interrupt asked again under a key that
        timed out (a failed run retried from the dead letters) is opened again. LeaseLost when
        another attempt owns the run. An earlier try that committed (its reply lost) counts as
        committed."""
        rid = uuid.UUID(a.run_id)
        first, last = a.events[0].seq, a.events[-1].seq
        async with self.db.conn() as c, c.transaction():
            row = await c.fetchrow(
                "SELECT attempt, status, last_seq, cancel_requested FROM runs "
                "WHERE run_id = $1 FOR UPDATE",
                rid,
            )
            if row is None or row["attempt"] != a.attempt:
                raise LeaseLost(f"run {a.run_id} attempt {a.attempt} no longer owns the run")
            if row["status"] == "waiting" and row["last_seq"] == last:
                return "waiting"
            if row["status"] != "running" or row["last_seq"] != first - 1:
                raise LeaseLost(f"run {a.run_id} attempt {a.attempt} no longer owns the run")
            if row["cancel_requested"]:
                return "cancel"
            await archive(c, a.run_id, a.events)
            await c.execute(
                """INSERT INTO run_interrupts (run_id, interrupt_id, key, attempt, payload,
                       has_default, default_value, deadline)
                   VALUES ($1, $2, $3, $4, $5, $6, $7,
                       now() + make_interval(secs => $8::float8))
                   ON CONFLICT (run_id, key) DO UPDATE SET
                       interrupt_id = excluded.interrupt_id, attempt = excluded.attempt,
                       payload = excluded.payload, has_default = excluded.has_default,
                       default_value = excluded.default_value, deadline = excluded.deadline,
                       asked_at = now(), outcome = NULL, value = NULL, answered_at = NULL""",
                rid,
                a.interrupt_id,
                a.key,
                a.attempt,
                a.payload,
                a.has_default,
                a.default if a.has_default else None,
                a.timeout_seconds,
            )
            await c.execute(
                WAIT_RUN,
                rid,
                a.timeout_seconds,
                a.interrupt_id,
                a.payload,
                last,
                sum(len(e.data) for e in a.events),
                a.usage,
                a.cost_usd,
            )
        return "waiting"

    async def answers(self, run_id: str) -> dict[str, Any]:
        """key -> value of the run's answered interrupts (a resumed attempt's replay)."""
        rows = await self.db.fetch(
            "SELECT key, value FROM run_interrupts WHERE run_id = $1 "
            "AND outcome IN ('answered', 'default')",
            uuid.UUID(run_id),
        )
        return {r["key"]: r["value"] for r in rows}

    # -- the API -------------------------------------------------------------------------------
    async def resume(self, run_id: str, user_id: str, interrupt_id: str, value: Any) -> Resumed:
        """waiting -> queued with the interrupt answered by `value` (the caller enqueues the
        run). NotFound when the run is not the user's; Conflict when it cannot take it, its
        code saying why: `interrupt_mismatch` (not this run's interrupt), `interrupt_answered`
        (closed already, with another value or by its deadline), `not_waiting` (the run was
        cancelled meanwhile)."""
        rid = uuid.UUID(run_id)
        async with self.db.conn() as c, c.transaction():
            status = await c.fetchval(
                "SELECT status FROM runs WHERE run_id = $1 AND user_id = $2 FOR UPDATE",
                rid,
                user_id,
            )
            if status is None:
                raise NotFound("no such run")
            asked = await c.fetchrow(
                "SELECT outcome, value FROM run_interrupts WHERE run_id = $1 AND interrupt_id = $2",
                rid,
                interrupt_id,
            )
            if asked is None:
                raise Conflict(
                    "this run has no interrupt with that interrupt_id", code="interrupt_mismatch"
                )
            if asked["outcome"] is not None:
                if asked["outcome"] == "answered" and _same(asked["value"], value):
                    return Resumed(run_id, interrupt_id, status, replayed=True)
                raise Conflict(
                    f"the interrupt was already closed ({asked['outcome']}) with another value",
                    code="interrupt_answered",
                )
            if status != "waiting":
                raise Conflict(f"the run is {status}, not waiting", code="not_waiting")
            await c.execute(
                "UPDATE run_interrupts SET outcome = 'answered', value = $3, answered_at = now() "
                "WHERE run_id = $1 AND interrupt_id = $2",
                rid,
                interrupt_id,
                value,
            )
            await c.execute(RESUME_RUN, rid)
        return Resumed(run_id, interrupt_id, "queued", replayed=False)

    # -- the reconciler ------------------------------------------------------------------------
    async def due(self, limit: int) -> list[tuple[str, str]]:
        """(run_id, interrupt_id) of waiting runs past their interrupt's deadline, oldest
        first (through the partial index `runs_interrupt_due`)."""
        rows = await self.db.fetch(
            "SELECT run_id, interrupt->>'interrupt_id' AS interrupt_id FROM runs "
            "WHERE status = 'waiting' AND interrupt_deadline <= now() "
            "ORDER BY interrupt_deadline LIMIT $1",
            limit,
        )
        return [(str(r["run_id"]), str(r["interrupt_id"])) for r in rows]

    async def expire(self, run_id: str, interrupt_id: str) -> Expired | None:
        """A deadline passed: answer with the interrupt's default (the run queued again) or
        fail the run `interrupt_timeout`. None when the run moved on meanwhile (answered,
        cancelled) or the deadline is not due."""
        rid = uuid.UUID(run_id)
        async with self.db.conn() as c, c.transaction():
            found = await c.fetchval(
                "SELECT 1 FROM runs WHERE run_id = $1 AND status = 'waiting' "
                "AND interrupt->>'interrupt_id' = $2 AND interrupt_deadline <= now() FOR UPDATE",
                rid,
                interrupt_id,
            )
            if found is None:
                return None
            asked = await c.fetchrow(
                "SELECT has_default, default_value FROM run_interrupts "
                "WHERE run_id = $1 AND interrupt_id = $2",
                rid,
                interrupt_id,
            )
            has_default = asked is not None and asked["has_default"]
            await c.execute(
                "UPDATE run_interrupts SET outcome = $3, value = $4, answered_at = now() "
                "WHERE run_id = $1 AND interrupt_id = $2",
                rid,
                interrupt_id,
                "default" if has_default else "timed_out",
                asked["default_value"] if has_default and asked is not None else None,
            )
            if has_default:
                await c.execute(RESUME_RUN, rid)
                return Expired(run_id, resumed=True)
            row = await c.fetchrow(TIME_OUT_RUN, rid, TIMEOUT_ERROR)
            run = run_of(row)
            event = encode_event(run.last_seq, {"type": "error", **TIMEOUT_ERROR})
            await archive(c, run_id, [event])
            nxt = await self.threads.next_of_thread(c, run_id)
        return Expired(run_id, resumed=False, ended=event, next_run=nxt)


def _same(stored: Any, value: Any) -> bool:
    """Whether a retried resume carries the value already recorded (compared as JSON)."""
    sort = orjson.OPT_SORT_KEYS
    return orjson.dumps(stored, option=sort) == orjson.dumps(value, option=sort)
