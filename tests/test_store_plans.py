"""The claim's thread-turn check stays on partial indexes whatever the size of `runs`: a claim
that scanned the table cost a second per run at a few ten thousand runs (found by
`bench.dispatch` after the `waiting` status joined the check)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.store.batches import CLAIM_MANY
from shared.store.runs import THREAD_TURN, TOUCH
from tests.helpers import plan_nodes, queued_run
from worker.batches import LANE_SESSION


async def test_the_thread_turn_check_reads_no_finished_run(store):
    # Given 20,000 runs that ended, a few queued ones (in a thread and not), fresh statistics
    async with store.db.conn() as c:
        await c.execute(
            """INSERT INTO runs (run_id, user_id, agent, input, status, thread_id)
               SELECT gen_random_uuid(), 'u', 'ticker', 'x', 'succeeded',
                      CASE WHEN g % 2 = 0 THEN 't' || (g % 50) END
               FROM generate_series(1, 20000) AS g"""
        )
    run_ids = [(await queued_run(store, thread)).run_id for thread in (None, "t1", "t2")]
    async with store.db.conn() as c:
        await c.execute("ANALYZE runs")
        # When a claim's check is planned, for a run outside a thread and for any run
        plans = [
            (
                await c.fetchval(
                    "EXPLAIN (FORMAT JSON) SELECT runs.run_id FROM runs "
                    f"WHERE runs.run_id = $1 AND {THREAD_TURN}",
                    uuid.UUID(rid),
                )
            )[0]["Plan"]
            for rid in run_ids
        ]
    # Then no node reads `runs` sequentially: the run by its key, its thread's earlier runs
    # through the partial indexes of queued and of waiting runs
    scans = [n for p in plans for n in plan_nodes(p) if n.get("Relation Name") == "runs"]
    assert scans
    assert all(n["Node Type"] != "Seq Scan" for n in scans), scans
    assert {n.get("Index Name") for n in scans} <= {
        "runs_pkey",
        "runs_thread_queue",
        "runs_thread_waiting",
    }


async def _generic_plan(
    conn, name: str, sql: str, types: str, args: str, session: dict[str, str]
) -> dict[str, Any]:
    """The plan Postgres keeps for a prepared statement once it stops planning per call (as a
    worker's batch lanes make it keep), under the `session`'s settings."""
    await conn.execute(f"PREPARE {name}({types}) AS {sql}")
    async with conn.transaction():
        for setting, value in {"plan_cache_mode": "force_generic_plan", **session}.items():
            await conn.execute(f"SET LOCAL {setting} = {value}")
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({args})")
    await conn.execute(f"DEALLOCATE {name}")
    return dict(plan[0]["Plan"])


async def test_claims_and_heartbeats_find_their_runs_by_key_however_many_are_in_flight(store):
    # Given 3,000 runs in flight that statistics have never seen (autovacuum off, or not yet
    # come: the plan Postgres keeps then thinks few runs are in flight)
    async with store.db.conn() as c:
        await c.execute(
            """INSERT INTO runs (run_id, user_id, agent, input, status)
               SELECT gen_random_uuid(), 'u', 'ticker', 'x',
                      CASE WHEN g % 2 = 0 THEN 'queued' ELSE 'running' END
               FROM generate_series(1, 3000) AS g"""
        )
        run_id = await c.fetchval("SELECT run_id::text FROM runs LIMIT 1")
        ids = f"'{{{run_id}}}'::uuid[]"
        # When the plans a worker keeps for its claims and its heartbeat are made
        plans = [
            await _generic_plan(
                c, "claim", CLAIM_MANY, "uuid[], bool[]", f"{ids}, '{{f}}'", LANE_SESSION
            ),
            await _generic_plan(c, "touch", TOUCH, "uuid[]", ids, {}),
        ]
    # Then each reads `runs` by the keys it was given (and a thread's earlier runs through
    # their partial indexes), never walking every run in flight: a scan of `runs_active` or
    # `runs_user_in_flight` costs each claim and each heartbeat the whole queue, and the dead
    # index entries every claim leaves behind
    for plan in plans:
        nodes = plan_nodes(plan)
        read = {n["Index Name"] for n in nodes if "Index Name" in n}
        assert "runs_pkey" in read
        assert read <= {"runs_pkey", "runs_thread_queue", "runs_thread_waiting"}, read
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]
