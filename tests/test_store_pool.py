"""The pool gives a connection back without a round trip: asyncpg's default reset (`RESET ALL`,
`UNLISTEN *`, advisory locks released) is one more statement on every release, and the release
is awaited before the caller goes on, so every pooled statement cost two round trips (a
submit's insert, `GET /runs/{id}`; `bench.stream_ttft`). Session state therefore lives only on
`Database.session()` connections, which are closed after use."""

from __future__ import annotations

import dataclasses

import pytest

from shared.config import Settings
from shared.store import Store
from shared.store.pool import Database

ADVISORY_HERE = """SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory'
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""


async def test_a_pooled_statement_is_one_round_trip(settings: Settings) -> None:
    # Given a pool of one connection, every statement it runs logged
    one = dataclasses.replace(settings, pg_pool_min=1, pg_pool_max=1)
    db = await Database.open(one, "test-pool")
    sent: list[str] = []
    try:
        async with db.conn() as c:
            c.add_query_logger(lambda q: sent.append(q.query))
            # When it runs a statement, goes back to the pool, and runs another
            assert await c.fetchval("SELECT 1") == 1
        assert await db.fetchval("SELECT 2") == 2
        async with db.conn() as c:
            c.remove_query_logger(sent.append)
    finally:
        await db.close()
    # Then the server got those two statements and nothing between them
    assert sent[:2] == ["SELECT 1", "SELECT 2"], sent


async def test_a_transaction_left_open_is_rolled_back_on_release(settings: Settings) -> None:
    # Given a pooled connection given back inside a transaction it never ended
    one = dataclasses.replace(settings, pg_pool_min=1, pg_pool_max=1)
    db = await Database.open(one, "test-pool")
    try:
        async with db.conn() as c:
            await c.execute("BEGIN")
            await c.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
        # Then the next user of that connection is outside any transaction
        async with db.conn() as c:
            assert not c.is_in_transaction()
            assert await c.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await db.close()


async def test_the_retention_lock_ends_with_its_session(store: Store) -> None:
    # Given a retention pass that holds the lock and fails
    held: list[int] = []

    async def failing_pass() -> None:
        async with store.retention.lock() as c:
            assert c is not None
            held.append(await store.db.fetchval(ADVISORY_HERE))
            raise RuntimeError("the pass broke")

    with pytest.raises(RuntimeError):
        await failing_pass()
    assert held == [1]
    # Then the lock is gone with its connection: no pooled connection carries it, and the next
    # pass takes it
    assert await store.db.fetchval(ADVISORY_HERE) == 0
    async with store.retention.lock() as c:
        assert c is not None


async def test_the_worker_batch_lanes_plan_once_on_connections_of_their_own(
    store: Store, redis_client: object
) -> None:
    from shared.redis.keys import Keys
    from shared.redis.runs import RedisIO
    from worker.batches import RunWrites

    # Given a worker's grouped writes
    writes = RunWrites(
        store,
        RedisIO(redis_client, Keys.from_settings(store.db.settings), store.db.settings),
        "w-1",
    )  # type: ignore[arg-type]
    # When a lane opens its connection
    conn = await writes._conn(("append", 0))
    # Then its statements keep one generic plan, and the pool's connections are untouched
    assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    assert await conn.fetchval("SHOW enable_seqscan") == "off"
    assert await store.db.fetchval("SHOW plan_cache_mode") == "auto"
    assert await store.db.fetchval("SHOW enable_seqscan") == "on"
    # And closing the writes ends it
    await writes.close()
    assert conn.is_closed()


async def test_a_lane_plan_made_while_runs_was_small_still_reads_runs_by_its_key(
    store: Store,
) -> None:
    from shared.models import encode_event
    from shared.store import EventBatch, NewRun
    from worker.batches import LANE_SESSION

    # Given a lane whose append plan was made while `runs` held one run (no statistics: as
    # where autovacuum is off or has not come yet)
    lane = await store.db.dedicated(LANE_SESSION)
    try:
        [(run_id, _)] = await store.submits.insert_runs([NewRun("u", "ticker", "x", {}, {})])
        [run] = await store.batches.claim_many([(run_id, False)], lane)
        assert run is not None

        def batch(seq: int) -> list[EventBatch]:
            return [EventBatch(run_id, run.attempt, [encode_event(seq, {"type": "token"})])]

        for seq in range(1, 7):  # past the five custom plans Postgres tries first
            assert await store.events.append_many(batch(seq), lane) == [None]
        # When `runs` has grown to thousands of runs and the lane appends again
        await store.db.execute(
            """INSERT INTO runs (run_id, user_id, agent, input, status)
               SELECT gen_random_uuid(), 'v', 'ticker', 'x', 'succeeded'
               FROM generate_series(1, 3000)"""
        )
        async with lane.transaction():  # (the scans counted so far by this session)
            assert await store.events.append_many(batch(7), lane) == [None]
            scans = await lane.fetchrow(
                "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'runs'"
            )
        # Then the append found its run through the key, never by reading the table
        assert scans is not None
        assert scans["seq_scan"] == 0, dict(scans)
        assert scans["idx_scan"] > 0
    finally:
        await store.db.discard(lane)
