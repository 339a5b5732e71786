"""The claim's thread-turn check stays on partial indexes whatever the size of `runs`: a claim
that scanned the table cost a second per run at a few ten thousand runs (found by
`bench.dispatch` after the `waiting` status joined the check)."""

from __future__ import annotations

import uuid

from shared.store.runs import THREAD_TURN
from tests.helpers import plan_nodes, queued_run


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
