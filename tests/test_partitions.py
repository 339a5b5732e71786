"""The event archive partitioned by time (migration 0012): a run's events live in the partition
of its creation time, a replay reads that partition only, partitions are made ahead (taking
the rows that landed in the default partition meanwhile), and the migration moves an existing
archive into the partitioned table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.config import Settings
from shared.migrate import available
from shared.models import Event
from shared.store import Store
from shared.store.retention import Partition, align, plan_partitions
from shared.store.runs import EVENTS_AFTER
from tests.conftest import create_database, drop_database
from tests.helpers import plan_nodes, queued_run
from worker.retention import retention_pass

DAY = timedelta(days=1)
T0 = datetime(2026, 11, 5, 15, 30, tzinfo=UTC)


async def finished_run(store: Store, created_at: datetime, events: int) -> str:
    run_id = uuid.uuid4()
    async with store.db.conn() as c:
        await c.execute(
            """INSERT INTO runs (run_id, user_id, agent, input, status, attempt, created_at,
                   finished_at, last_seq)
               VALUES ($1, 'u', 'ticker', 'x', 'succeeded', 1, $2, $2, $3)""",
            run_id,
            created_at,
            events,
        )
        await c.execute(
            """INSERT INTO run_events (run_id, run_created_at, seq, type, data)
               SELECT $1, $2, s, 'token', convert_to('{"seq":' || s || '}', 'UTF8')
               FROM generate_series(1, $3) s""",
            run_id,
            created_at,
            events,
        )
    return str(run_id)


async def holders(store: Store) -> dict[str, int]:
    rows = await store.db.fetch(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM run_events GROUP BY 1"
    )
    return {r["part"]: r["n"] for r in rows}


def test_partitions_are_whole_periods_counted_from_the_epoch() -> None:
    # 1970-01-01 was a Thursday: weekly partitions start on Thursdays
    assert align(T0, 7) == datetime(2026, 11, 5, tzinfo=UTC)
    assert align(T0, 1) == datetime(2026, 11, 5, tzinfo=UTC)
    made = plan_partitions([], T0, T0 + 15 * DAY, 7)
    assert [(lo.day, hi.day) for lo, hi in made] == [(5, 12), (12, 19), (19, 26)]


def test_a_changed_period_fills_only_what_existing_partitions_leave() -> None:
    # Given daily partitions for Nov 5 and 6, and a new period of a week
    nov = [datetime(2026, 11, d, tzinfo=UTC) for d in range(1, 31)]
    existing = [Partition(nov[4], nov[5], "a"), Partition(nov[5], nov[6], "b")]
    made = plan_partitions(existing, T0, T0 + 10 * DAY, 7)
    # Then the rest of that week, then whole weeks: no overlap, no gap
    assert made == [(nov[6], nov[11]), (nov[11], nov[18])]


async def test_a_replay_reads_only_the_partition_of_its_run(store: Store, settings: Settings):
    # Given partitions for a month of runs, runs in each week, fresh statistics
    await retention_pass(settings.with_(event_partition_days=1), store, T0 - 30 * DAY)
    async with store.retention.lock() as c:
        assert c is not None
        await store.retention.ensure_partitions(c, T0 - 30 * DAY, T0 + DAY, 1)
    run_ids = [await finished_run(store, T0 - d * DAY, 30) for d in range(30)]
    async with store.db.conn() as c:
        await c.execute("ANALYZE")
        # When the archive's replay of one run runs, as the API runs it (a prepared statement)
        plan = (
            await c.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {EVENTS_AFTER}", uuid.UUID(run_ids[7]), 10, 1000
            )
        )[0]["Plan"]
    # Then one partition's index is read; the others' never run
    reads = [
        n
        for n in plan_nodes(plan)
        if str(n.get("Relation Name", "")).startswith("run_events") and n["Actual Loops"] > 0
    ]
    assert len(reads) == 1, reads
    assert reads[0]["Relation Name"] == f"run_events_{(T0 - 7 * DAY):%Y%m%d}"
    # And the replay itself serves the run's events after the cursor, in order
    assert [e.seq for e in await store.runs.events_after(run_ids[7], 10)] == list(range(11, 31))


async def test_partitions_are_made_ahead_and_take_their_rows_from_the_default(
    store: Store, settings: Settings
):
    # Given events archived while no partition covered their run (the job was not running:
    # the run is older than the partitions the migration made)
    run = await queued_run(store)
    async with store.db.conn() as c:
        created = await c.fetchval(
            "UPDATE runs SET status = 'running', attempt = 1, created_at = $2 WHERE run_id = $1 "
            "RETURNING created_at",
            uuid.UUID(run.run_id),
            T0,
        )
    events = [Event(seq=i, type="token", data=b'{"seq":%d}' % i) for i in (1, 2, 3)]
    await store.runs.checkpoint(run.run_id, 1, events)
    assert set(await holders(store)) == {"run_events_default"}
    # When the job passes
    s = settings.with_(event_partition_days=1, event_partitions_ahead=3)
    done = await retention_pass(s, store, created)
    # Then today's partition and three more exist, and the run's events moved into today's
    assert done is not None
    assert len(done.created) == 4
    assert await holders(store) == {f"run_events_{created:%Y%m%d}": 3}
    # And the archive goes on as before: a repeated write is ignored, later events follow
    await store.runs.checkpoint(run.run_id, 1, [*events, Event(seq=4, type="token", data=b"{}")])
    assert [e.seq for e in await store.runs.events_after(run.run_id, 0)] == [1, 2, 3, 4]
    assert await holders(store) == {f"run_events_{created:%Y%m%d}": 4}
    # And a second pass makes nothing new
    again = await retention_pass(s, store, created)
    assert again is not None
    assert again.created == []


async def test_the_migration_moves_an_existing_archive_into_the_partitioned_table() -> None:
    # Given a deployment at migration 11 with a run and its archived events
    name = f"longrun_test_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(name)
    conn: Any = await asyncpg.connect(dsn)
    try:
        for m in available():
            if m.version < 12:
                await conn.execute(m.sql)
        run_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO runs (run_id, user_id, agent, input, status, created_at) "
            "VALUES ($1, 'u', 'ticker', 'x', 'succeeded', $2)",
            run_id,
            T0,
        )
        await conn.execute(
            "INSERT INTO run_events (run_id, seq, type, data) "
            "SELECT $1, s, 'token', '\\x7b7d' FROM generate_series(1, 5) s",
            run_id,
        )
        # When migration 12 runs
        await conn.execute(next(m.sql for m in available() if m.version == 12))
        # Then the events are in the partitioned table, keyed by their run's creation time, in
        # the partition of its week (weeks from the run's to two ahead of now were made)
        rows = await conn.fetch(
            "SELECT seq, run_created_at, tableoid::regclass::text AS part FROM run_events "
            "ORDER BY seq"
        )
        assert [(r["seq"], r["run_created_at"]) for r in rows] == [(s, T0) for s in range(1, 6)]
        assert {r["part"] for r in rows} == {f"run_events_{align(T0, 7):%Y%m%d}"}
        made = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'run_events'::regclass"
        )
        assert made >= 3 + (datetime.now(UTC) - T0) // timedelta(days=7)
        kind = await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'run_events'")
        assert kind == b"p"
    finally:
        await conn.close()
        await drop_database(name)


async def test_a_busy_archive_makes_the_job_wait_briefly_then_try_at_its_next_pass(
    store: Store, settings: Settings
):
    # Given a long read holding the default partition (attaching needs it alone)
    s = settings.with_(event_partition_days=1, event_partitions_ahead=1)
    async with store.db.conn() as reader, reader.transaction():
        await reader.execute("SELECT count(*) FROM run_events_default")
        # When the job passes
        done = await retention_pass(s, store, T0)
        # Then it made nothing and did not fail (its DDL waited at most its lock timeout)
        assert done is not None
        assert done.created == []
    # And the next pass, once the read ended, makes the partitions
    done = await retention_pass(s, store, T0)
    assert done is not None
    assert len(done.created) == 2
