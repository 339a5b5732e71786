"""The run figures of `/metrics` are counters kept by the statements that end runs, and gauges
read through the active runs only: exact whichever way a run ends, untouched when old runs are
deleted, and read at a cost that follows the backlog, not the number of runs ever made."""

from __future__ import annotations

from collections import Counter

import pytest

from shared.errors import LeaseLost
from shared.migrate import migrate
from shared.models import Transition, encode_event
from shared.store import Finishing, Store, connect
from shared.store.counters import READ_COUNTERS, SHARDS
from shared.store.ops import ACTIVE_RUNS, OLDEST_WAIT
from tests.helpers import plan_nodes, queued_run


async def _running(store: Store, n: int) -> list[str]:
    ids = [(await queued_run(store)).run_id for _ in range(n)]
    for run_id in ids:
        assert await store.runs.claim(run_id, reclaim=False) is not None
    return ids


def _end(run_id: str, move: Transition, cost: float = 0.0, attempt: int = 1) -> Finishing:
    kind = {Transition.SUCCEED: "done", Transition.FAIL: "error", Transition.CANCEL: "cancelled"}
    return Finishing(run_id, attempt, move, [encode_event(1, {"type": kind[move]})], cost_usd=cost)


async def _end_alone(store: Store, f: Finishing) -> None:
    """A run ending on its own (a batch of one), refused when its attempt lost it."""
    (refused,) = await store.batches.finish_many([f])
    if refused is not None:
        raise refused


async def test_every_way_a_run_ends_is_counted_once_with_its_cost(store):
    # Given five running runs and two queued ones
    a, b, c, d, e = await _running(store, 5)
    f = (await queued_run(store)).run_id
    await queued_run(store)

    # When a, b succeed and c fails in one batch, d succeeds alone, e is cancelled by its worker
    # (the thread path), and the user cancels f while it is queued
    out = await store.batches.finish_many(
        [
            _end(a, Transition.SUCCEED, 0.5),
            _end(b, Transition.SUCCEED, 0.25),
            _end(c, Transition.FAIL),
        ]
    )
    assert out == [None, None, None]
    await _end_alone(store, _end(d, Transition.SUCCEED, 0.125))
    await store.runs.finish(_end(e, Transition.CANCEL))
    assert await store.runs.cancel_queued(f, "u") is not None
    # And writes that end nothing are refused: a stale attempt, alone and in a batch, and a
    # second cancel
    with pytest.raises(LeaseLost):
        await _end_alone(store, _end(a, Transition.FAIL, 9.0))
    (lost,) = await store.batches.finish_many([_end(b, Transition.FAIL, 9.0)])
    assert isinstance(lost, LeaseLost)
    assert await store.runs.cancel_queued(f, "u") is None

    # Then each ended run is counted once, by its terminal status, with the spend it recorded
    figures = await store.ops.run_figures()
    assert figures.finished == {"succeeded": 3, "failed": 1, "cancelled": 2}
    assert figures.cost_usd == 0.875
    # And the one still queued is the only active run (waiting runs are always reported)
    assert figures.active == {"queued": 1, "waiting": 0}


async def test_deleting_old_finished_runs_takes_nothing_from_the_counters(store):
    # Given runs that ended, one of them with a cost
    a, b = await _running(store, 2)
    await store.batches.finish_many([_end(a, Transition.SUCCEED, 0.5), _end(b, Transition.FAIL)])
    before = await store.ops.run_figures()
    assert before.finished == {"succeeded": 1, "failed": 1}

    # When every finished run is deleted (what a retention job does)
    async with store.db.conn() as c:
        await c.execute("DELETE FROM run_events")
        await c.execute("DELETE FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled')")

    # Then the counters have not gone backwards
    assert await store.ops.run_figures() == before


async def test_a_run_retried_from_the_dead_letters_counts_both_endings_and_its_spend_once(store):
    # Given a run that failed having spent 0.25
    (run_id,) = await _running(store, 1)
    await _end_alone(store, _end(run_id, Transition.FAIL, 0.25))

    # When an operator re-runs it, and its second attempt resumes and succeeds at 0.75 in all
    assert await store.ops.retry_failed(run_id)
    assert await store.runs.claim(run_id, reclaim=False) is not None
    await _end_alone(store, _end(run_id, Transition.SUCCEED, 0.75, attempt=2))

    # Then it ended twice, and its spend is counted once: 0.75, not 0.25 + 0.75
    figures = await store.ops.run_figures()
    assert figures.finished == {"failed": 1, "succeeded": 1}
    assert figures.cost_usd == 0.75


async def test_each_writer_adds_to_its_own_shard(store):
    # Given two runs, ended through two connections (as two batch lanes do)
    a, b = await _running(store, 2)
    conns = [await store.db.acquire(), await store.db.acquire()]
    try:
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        for run_id, conn in zip((a, b), conns, strict=True):
            assert await store.batches.finish_many([_end(run_id, Transition.SUCCEED)], conn) == [
                None
            ]
    finally:
        for conn in conns:
            await store.db.release(conn)

    # Then each counted in its own backend's shard: the two did not share a row's lock
    async with store.db.conn() as c:
        rows = await c.fetch("SELECT shard, runs FROM run_counters WHERE status = 'succeeded'")
    assert {r["shard"]: r["runs"] for r in rows} == Counter(p % SHARDS for p in pids)


async def test_the_figures_are_read_without_touching_a_finished_run(store):
    # Given 5000 runs that ended long ago, three queued ones, and fresh statistics
    async with store.db.conn() as c:
        await c.execute(
            """INSERT INTO runs (run_id, user_id, agent, input, status)
               SELECT gen_random_uuid(), 'u', 'ticker', 'x', 'succeeded'
               FROM generate_series(1, 5000)"""
        )
    for _ in range(3):
        await queued_run(store)
    async with store.db.conn() as c:
        await c.execute("ANALYZE runs")

        # When the statements /metrics reads are planned
        plans = [
            (await c.fetchval(f"EXPLAIN (FORMAT JSON) {query}"))[0]["Plan"]
            for query in (ACTIVE_RUNS, READ_COUNTERS, OLDEST_WAIT)
        ]

    # Then `runs` is reached only through indexes that hold nothing but active or waiting runs
    touching_runs = [n for p in plans for n in plan_nodes(p) if n.get("Relation Name") == "runs"]
    assert touching_runs
    for node in touching_runs:
        assert node["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
        assert node["Index Name"] in ("runs_active", "runs_user_in_flight", "runs_waiting")
    assert (await store.ops.run_figures()).active == {"queued": 3, "waiting": 0}


async def test_the_migration_counts_the_runs_that_ended_before_it(settings, store):
    conn = await connect(settings, "longrun-test")
    try:
        # Given a database as it was before the counters, holding runs that ended and one queued
        await conn.execute("DROP TABLE run_counters")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 6")
        await conn.execute(
            """INSERT INTO runs (run_id, user_id, agent, input, status, cost_usd)
               SELECT gen_random_uuid(), 'u', 'ticker', 'x', s, c
               FROM (VALUES ('succeeded', 0.5), ('succeeded', 0.25), ('failed', 0.0),
                            ('queued', 0.0)) AS v(s, c)"""
        )

        # When it is migrated
        assert await migrate(conn) == ["0006_run_counters.sql"]
    finally:
        await conn.close()

    # Then the counters start from what had ended
    figures = await store.ops.run_figures()
    assert figures.finished == {"succeeded": 2, "failed": 1}
    assert figures.cost_usd == 0.75
    assert figures.active == {"queued": 1, "waiting": 0}
