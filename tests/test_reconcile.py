"""The reconciler, called directly: Postgres is the truth for what must be queued, and dead
consumers leave the group only when they hold nothing."""

from __future__ import annotations

from shared.models import QueuedRun, RunStatus
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from tests.helpers import queue_backlog, queued_run, wait_for
from worker.reconcile import reconcile_once


async def test_dead_consumers_leave_the_group_only_when_they_hold_nothing(settings, store):
    s = settings.with_(lease_seconds=0.3)  # consumers idle over 3 s count as dead
    keys = Keys.from_settings(s)
    r = create_redis(s, "test")
    rio = RedisIO(r, keys, s)
    try:
        await rio.ensure_group()
        # Given a consumer holding an entry and one holding nothing, both long idle
        await rio.enqueue(QueuedRun("00000000-0000-0000-0000-000000000000", "u"))
        await rio.enqueue(QueuedRun("00000000-0000-0000-0000-000000000001", "u"))
        await rio.group.pull(0, "holder", 1)
        got, _ = await rio.group.pull(0, "ghost", 1)
        await r.xack(keys.queue, keys.group, got[0].stream_id)
        before = {c["name"] for c in await r.xinfo_consumers(keys.queue, keys.group)}
        assert before & {b"ghost", "ghost"}
        # A first pass right away removes nobody: they are not idle long enough
        await reconcile_once(s, store, rio, "me")
        assert len(await r.xinfo_consumers(keys.queue, keys.group)) == 2

        async def ghost_removed() -> bool:
            await r.delete(keys.reconcile_lock)
            await reconcile_once(s, store, rio, "me")
            names = {c["name"] for c in await r.xinfo_consumers(keys.queue, keys.group)}
            return b"ghost" not in names and "ghost" not in names

        await wait_for(ghost_removed, timeout=10, interval=0.3)
        names = {c["name"] for c in await r.xinfo_consumers(keys.queue, keys.group)}
        assert names & {b"holder", "holder"}
        assert (await r.xpending(keys.queue, keys.group))["pending"] == 1
    finally:
        await r.aclose()


async def test_a_running_run_without_a_queue_entry_is_requeued_once(settings, store):
    s = settings.with_(lease_seconds=0.05)
    keys = Keys.from_settings(s)
    r = create_redis(s, "test")
    rio = RedisIO(r, keys, s)
    try:
        run = await queued_run(store)
        claimed = await store.runs.claim(run.run_id, reclaim=False)
        assert claimed is not None
        assert claimed.status is RunStatus.RUNNING

        async def requeued() -> int:
            await r.delete(keys.reconcile_lock)
            return await reconcile_once(s, store, rio, "me")

        assert await wait_for(requeued, timeout=5) == 1
        again = await store.runs.get_run(run.run_id)
        assert again is not None
        assert again.status is RunStatus.QUEUED
        assert again.attempt == 1  # the attempt count is kept
        # A second pass finds the entry and does nothing
        await r.delete(keys.reconcile_lock)
        assert await reconcile_once(s, store, rio, "me") == 0
        assert await queue_backlog(r, keys) == 1
    finally:
        await r.aclose()


async def test_workers_silent_for_ten_leases_are_forgotten(settings, store):
    import time

    s = settings.with_(lease_seconds=1.0)
    keys = Keys.from_settings(s)
    r = create_redis(s, "test")
    rio = RedisIO(r, keys, s)
    try:
        await rio.ensure_group()
        await r.zadd(keys.workers, {"gone": time.time() - 60, "alive": time.time()})
        await r.hset(keys.worker_info("gone"), mapping={"in_flight": 0})

        await reconcile_once(s, store, rio, "me")

        assert await r.zrange(keys.workers, 0, -1) == [b"alive"]
        assert not await r.exists(keys.worker_info("gone"))
    finally:
        await r.aclose()
