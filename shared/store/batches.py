"""The worker's many-run statements (`worker.batches`): claims and terminal commits of many
runs, each one statement with one outcome per run, falling back to the one-run statements of
`RunRepo` when a statement fails for a reason other than an outage."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from shared.errors import LeaseLost
from shared.models import Run
from shared.store.counters import ENDED_UNDER_FENCE, count_ended
from shared.store.fencing import event_arrays, fenced_events, rounds
from shared.store.pool import Database
from shared.store.rows import RUN_COLUMNS, TARGETS, Finishing, run_of
from shared.store.runs import NOT_EARLY, THREAD_TURN, RunRepo, commit_end, settle_end
from shared.store.webhooks import deliveries_of


def _qualified(columns: str) -> str:
    """`a, b` -> `runs.a, runs.b` (a RETURNING next to a FROM that has a run_id too)."""
    return ", ".join(f"runs.{c.strip()}" for c in columns.split(","))


# The claim of many runs in one statement: each run's row locked in run_id order (two
# workers' batches cannot deadlock), then claimed; a fresh delivery claims only a queued run,
# a re-claimed entry (its lease expired) a running one too. The status test is `IS TRUE`, so
# not an index condition: the plan a batch lane keeps finds the runs by their keys. Left to
# the planner, statistics that saw few runs in flight (autovacuum off, or not come yet) made
# it walk `runs_active` (every queued and running run, and the dead entries each claim
# leaves) and sort them on every claim: 0.6 ms after a thousand runs (bench.stream_ttft).
CLAIM_MANY = f"""WITH req AS (
        SELECT * FROM unnest($1::uuid[], $2::bool[]) AS r(run_id, reclaim)
    ), locked AS (
        SELECT runs.run_id FROM runs JOIN req USING (run_id)
        WHERE (runs.status = 'queued' OR (req.reclaim AND runs.status = 'running')) IS TRUE
          AND {THREAD_TURN} AND {NOT_EARLY}
        ORDER BY runs.run_id
        FOR UPDATE OF runs
    )
    UPDATE runs SET status = 'running', attempt = attempt + 1,
        started_at = coalesce(started_at, now()), updated_at = now()
    FROM locked WHERE runs.run_id = locked.run_id
    RETURNING {_qualified(RUN_COLUMNS)}"""


# The terminal commit of many runs (outside a thread) in one statement, counted with them and
# their webhooks' deliveries recorded:
# fenced (`fenced_events`) on each run's attempt and log, its last events archived with it.
FINISH_MANY = f"""WITH req AS (
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[],
            $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::float8[],
            $8::int[], $13::int[], $14::bigint[])
        AS r(run_id, attempt, target, output, error, usage, cost, seq, first_seq, bytes)
    ), {fenced_events("runs.run_id, runs.cost_usd", 9)}, finished AS (
        UPDATE runs SET status = req.target, output = req.output,
            error = req.error, usage = coalesce(req.usage, runs.usage),
            cost_usd = req.cost, finished_at = now(), updated_at = now(),
            last_seq = req.seq, event_bytes = runs.event_bytes + req.bytes
        FROM req
        WHERE runs.run_id = req.run_id
          AND runs.run_id IN (SELECT run_id FROM fence)
        RETURNING runs.run_id, runs.status, runs.cost_usd, runs.webhook_url
    ), {count_ended(ENDED_UNDER_FENCE)}, {deliveries_of("finished")}
    SELECT run_id FROM finished"""


def finish_many_args(batch: Sequence[Finishing]) -> list[Any]:
    """`FINISH_MANY`'s parameters: one array per run column, one per event column."""
    run_ids = [uuid.UUID(f.run_id) for f in batch]
    return [
        run_ids,
        [f.attempt for f in batch],
        [TARGETS[f.move] for f in batch],
        [f.output for f in batch],
        [f.error for f in batch],
        [f.usage for f in batch],
        [f.cost_usd for f in batch],
        [f.events[-1].seq for f in batch],
        *event_arrays(run_ids, [f.events for f in batch]),
        [f.events[0].seq for f in batch],
        [sum(len(e.data) for e in f.events) for f in batch],
    ]


class BatchRepo:
    def __init__(self, db: Database, runs: RunRepo) -> None:
        self.db = db
        self.runs = runs  # the one-run statements a failed batch falls back to

    async def claim_many(
        self, items: Sequence[tuple[str, bool]], conn: asyncpg.Connection | None = None
    ) -> list[Run | None]:
        """`claim` for many (run_id, reclaim) at once, in one statement: the rows are locked in
        run_id order (two workers' batches cannot deadlock on each other), then claimed.
        One outcome per item, in order. A run named twice is claimed by its first item only
        here, the later ones in a following statement (as if they had come after)."""
        out: list[Run | None] = [None] * len(items)
        for round_ in rounds([run_id for run_id, _ in items]):
            try:
                async with self.db.held(conn) as c:
                    rows = await c.fetch(
                        CLAIM_MANY,
                        [uuid.UUID(items[i][0]) for i in round_],
                        [items[i][1] for i in round_],
                    )
            except asyncpg.PostgresError:
                # A thread's run collides with its running one (unique index), or a deadlock
                # with a statement outside these batches: claim each alone, as before.
                for i in round_:
                    out[i] = await self.runs.claim(items[i][0], reclaim=items[i][1])
                continue
            claimed = {str(r["run_id"]): r for r in rows}
            for i in round_:
                row = claimed.get(items[i][0])
                out[i] = None if row is None else run_of(row)
        return out

    async def finish_many(
        self, items: Sequence[Finishing], conn: asyncpg.Connection | None = None
    ) -> list[LeaseLost | None]:
        """`finish` (outside a thread) of many runs in one statement: each run's archive and
        terminal state are written only if its attempt still owns it. One outcome per item:
        None (committed) or LeaseLost for that run alone. A statement error (not an outage)
        falls back to one statement per run, so one bad run cannot fail the others."""
        out: list[LeaseLost | None] = [None] * len(items)
        for round_ in rounds([f.run_id for f in items]):
            batch = [items[i] for i in round_]
            try:
                async with self.db.held(conn) as c:
                    rows = await c.fetch(FINISH_MANY, *finish_many_args(batch))
            except asyncpg.PostgresError:
                for i in round_:
                    f = items[i]
                    async with self.db.held(conn) as c:
                        if not await commit_end(c, f):
                            out[i] = await settle_end(c, f)
                continue
            done = {str(r["run_id"]) for r in rows}
            for i in round_:
                f = items[i]
                if f.run_id not in done:
                    # Refused, or committed by an earlier try whose reply was lost: read it.
                    async with self.db.held(conn) as c:
                        out[i] = await settle_end(c, f)
        return out
