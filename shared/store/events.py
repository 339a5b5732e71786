"""A run's event log in Postgres, the truth clients are served from: appends of many runs in
one statement, each fenced on its attempt (the run is `running` under it) and on seq
continuity (`last_seq` is the seq before the batch), under the run row's lock; and the
read-back that settles an append or terminal commit whose outcome is unknown (the connection
dropped after the statement was sent: it may have committed)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.errors import LeaseLost
from shared.models import Event
from shared.store.fencing import event_arrays, fenced_events, rounds
from shared.store.pool import Database

# One statement for the event batches of many runs, each fenced (`fenced_events`) on its
# attempt and its log's last seq: a run whose attempt, status or last seq is not the batch's
# own writes nothing.
APPEND_MANY = f"""WITH req AS (
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::bigint[])
        AS r(run_id, attempt, first_seq, last_seq, bytes)
    ), {fenced_events("runs.run_id", 6)}
    UPDATE runs SET last_seq = req.last_seq, event_bytes = runs.event_bytes + req.bytes
    FROM req
    WHERE runs.run_id = req.run_id AND runs.run_id IN (SELECT run_id FROM fence)
    RETURNING runs.run_id"""

RUN_STATES = "SELECT run_id, attempt, status, last_seq FROM runs WHERE run_id = ANY($1::uuid[])"


@dataclass(frozen=True)
class EventBatch:
    """Consecutive events of one run, appended by one attempt."""

    run_id: str
    attempt: int
    events: Sequence[Event]

    @property
    def first_seq(self) -> int:
        return self.events[0].seq

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq

    @property
    def size(self) -> int:
        return sum(len(e.data) for e in self.events)


@dataclass(frozen=True)
class RunState:
    """What the read-back of a run says: who owns it, its status, how far its log goes."""

    attempt: int
    status: str
    last_seq: int


def append_many_args(batches: Sequence[EventBatch]) -> list[object]:
    run_ids = [uuid.UUID(b.run_id) for b in batches]
    return [
        run_ids,
        [b.attempt for b in batches],
        [b.first_seq for b in batches],
        [b.last_seq for b in batches],
        [b.size for b in batches],
        *event_arrays(run_ids, [b.events for b in batches]),
    ]


def settled_append(batch: EventBatch, state: RunState | None) -> LeaseLost | None:
    """The outcome of an append the statement did not confirm, judged from the run's row: it
    landed (an earlier try committed, its reply was lost) or the attempt no longer owns the
    run's log (another attempt took it, or the run ended)."""
    if state is None:
        return LeaseLost(f"run {batch.run_id} is gone")
    if state.attempt == batch.attempt and state.status == "running":
        if state.last_seq == batch.last_seq:
            return None
        return LeaseLost(
            f"run {batch.run_id}: its log is at seq {state.last_seq}, "
            f"not {batch.first_seq - 1} (attempt {batch.attempt})"
        )
    return LeaseLost(f"run {batch.run_id} attempt {batch.attempt} no longer owns the run")


class EventRepo:
    """The event log's appends (the archive's reads are `RunRepo.events_after`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def run_states(
        self, run_ids: Sequence[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, RunState]:
        async with self.db.held(conn) as c:
            rows = await c.fetch(RUN_STATES, [uuid.UUID(r) for r in run_ids])
        return {str(r["run_id"]): RunState(r["attempt"], r["status"], r["last_seq"]) for r in rows}

    async def append_many(
        self, batches: Sequence[EventBatch], conn: asyncpg.Connection | None = None
    ) -> list[LeaseLost | None]:
        """Commit each batch (a run appears at most once) unless its attempt lost the run.
        One outcome per batch: None (committed, now or by an earlier try) or LeaseLost. An
        outage raises `Unavailable` for all (each caller retries its own)."""
        out: list[LeaseLost | None] = [None] * len(batches)
        for round_ in rounds([b.run_id for b in batches]):
            part = [batches[i] for i in round_]
            async with self.db.held(conn) as c:
                rows = await c.fetch(APPEND_MANY, *append_many_args(part))
            done = {str(r["run_id"]) for r in rows}
            unconfirmed = [i for i in round_ if batches[i].run_id not in done]
            if unconfirmed:
                states = await self.run_states([batches[i].run_id for i in unconfirmed], conn)
                for i in unconfirmed:
                    out[i] = settled_append(batches[i], states.get(batches[i].run_id))
        return out
