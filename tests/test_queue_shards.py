"""The queue in shards (`LONGRUN_QUEUE_SHARDS`): runs spread over the shards by their id, every
consumer reads every shard, re-claim and the reconciler cover each, a shrunk shard count still
drains, and XLEN summed over every shard's ready and held streams is exactly queued plus in
flight at each step."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.config import Settings
from shared.models import QueuedRun, RunStatus
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store
from tests.helpers import queue_backlog, queued_run, wait_for
from worker.reconcile import reconcile_once


@pytest.fixture
async def sharded(settings: Settings) -> AsyncIterator[tuple[Settings, Keys, RedisIO, Any]]:
    s = settings.with_(queue_shards=3)
    keys = Keys.from_settings(s)
    r = create_redis(s, "test")
    rio = RedisIO(r, keys, s)
    try:
        await rio.ensure_group()
        yield s, keys, rio, r
    finally:
        await r.aclose()


def ids_on_every_shard(keys: Keys, per_shard: int) -> list[str]:
    """Run ids, `per_shard` of them hashing to each shard."""
    out: dict[int, list[str]] = {i: [] for i in range(keys.shards)}
    while any(len(v) < per_shard for v in out.values()):
        rid = str(uuid.uuid4())
        if len(out[keys.shard_for(rid)]) < per_shard:
            out[keys.shard_for(rid)].append(rid)
    return [rid for v in out.values() for rid in v]


async def test_runs_spread_over_every_shard_and_every_shard_is_drained(sharded):
    _, keys, rio, r = sharded
    # Given 12 runs queued on a three-shard queue
    ids = ids_on_every_shard(keys, 4)
    added = await rio.enqueue_many([QueuedRun(rid, f"user-{i % 2}") for i, rid in enumerate(ids)])
    assert all(isinstance(x, str) for x in added)
    # Then each run waits on its own shard (its id's hash), and the backlog counts all of them
    for shard in range(3):
        held = await r.xrange(keys.held(shard))
        assert {f[b"run"].decode() for _, f in held} == {
            rid for rid in ids if keys.shard_for(rid) == shard
        }
    assert await queue_backlog(r, keys) == 12
    # When one consumer reads 5 of them, then the rest
    first = await rio.group.read("c1", 5, block_ms=0)
    assert len(first) == 5
    assert await queue_backlog(r, keys) == 12  # in flight still counts
    rest = await rio.group.read("c1", 20, block_ms=0)
    # Then every run was delivered once, each from its own shard
    got = first + rest
    assert sorted(e.run_id for e in got) == sorted(ids)
    assert all(e.shard == keys.shard_for(e.run_id) for e in got)
    assert {e.shard for e in got} == {0, 1, 2}
    assert len({e.entry_id for e in got}) == 12  # ids qualified by shard: never two alike
    # And acking drains the backlog one by one, exactly
    for n, e in enumerate(got, start=1):
        assert await rio.ack("c1", e.entry_id)
        assert await queue_backlog(r, keys) == 12 - n


async def test_reads_rotate_over_the_shards(sharded):
    _, keys, rio, _ = sharded
    # Given runs on every shard, read one at a time
    ids = ids_on_every_shard(keys, 2)
    await rio.enqueue_many([QueuedRun(rid, "u") for rid in ids])
    shards = [(await rio.group.read("c1", 1, block_ms=0))[0].shard for _ in range(3)]
    # Then three reads in a row took from three different shards
    assert sorted(shards) == [0, 1, 2]


async def test_a_dead_consumers_entries_are_reclaimed_from_every_shard(sharded):
    _, keys, rio, r = sharded
    ids = ids_on_every_shard(keys, 2)
    await rio.enqueue_many([QueuedRun(rid, "u") for rid in ids])
    # Given a consumer that took every entry and died
    taken = await rio.group.read("dead", 10, block_ms=0)
    assert len(taken) == 6
    # When another re-claims idle entries on each shard
    reclaimed = []
    for shard in range(3):
        _, entries = await rio.group.reclaim("alive", 0, "0-0", 10, shard)
        reclaimed += entries
    # Then it holds every one of them, with their shard, and renews them as its own
    assert sorted(e.run_id for e in reclaimed) == sorted(ids)
    assert {e.shard for e in reclaimed} == {0, 1, 2}
    lost, gone = await rio.renew("alive", [e.entry_id for e in reclaimed])
    assert (lost, gone) == ([], [])
    lost, _ = await rio.renew("dead", [e.entry_id for e in taken])
    assert sorted(lost) == sorted(e.entry_id for e in taken)
    assert await queue_backlog(r, keys) == 6
    assert all(await rio.ack_many("alive", [e.entry_id for e in reclaimed]))
    assert await queue_backlog(r, keys) == 0


async def test_the_reconciler_re_adds_a_lost_run_to_its_own_shard(sharded, store: Store):
    s, keys, rio, r = sharded
    # Given queued runs in Postgres whose entries Redis lost
    runs = [await queued_run(store) for _ in range(6)]

    async def fixed() -> int:
        await r.delete(keys.reconcile_lock)
        return await reconcile_once(s, store, rio, "me")

    # When the reconciler passes (once they are past the grace)
    assert await wait_for(fixed, timeout=10, interval=0.2) == 6
    # Then each is back, once, on the shard its id hashes to
    for run in runs:
        shard = keys.shard_for(run.run_id)
        held = [f[b"run"].decode() for _, f in await r.xrange(keys.held(shard))]
        assert held.count(run.run_id) == 1
    assert await queue_backlog(r, keys) == 6
    # And a second pass finds them all
    assert await fixed() == 0


async def test_the_reconciler_relists_held_entries_its_lines_lost(sharded, store: Store):
    s, keys, rio, r = sharded
    ids = ids_on_every_shard(keys, 2)
    await rio.enqueue_many([QueuedRun(rid, "u") for rid in ids])
    # Given a shard whose tenant lines were lost (the held stream kept)
    await r.delete(keys.ring(1, "normal"), keys.tenant_list(1, "normal", "u"))
    assert len(await rio.group.read("c", 10, block_ms=0)) == 4
    # When the reconciler passes, then the held entries are listed again and can be read
    await r.delete(keys.reconcile_lock)
    await reconcile_once(s, store, rio, "me")
    got = await rio.group.read("c", 10, block_ms=0)
    assert [e.shard for e in got] == [1, 1]


async def test_a_shrunk_queue_still_drains_its_removed_shards(sharded, settings):
    _, keys, rio3, r = sharded
    # Given runs on three shards, written by a process with queue_shards=3
    ids = ids_on_every_shard(keys, 2)
    await rio3.enqueue_many([QueuedRun(rid, "u") for rid in ids])
    # When the deployment goes back to one shard
    one = settings.with_(queue_shards=1)
    rio1 = RedisIO(r, Keys.from_settings(one), one)
    await rio1.ensure_group()
    # Then its workers still read all three shards (the largest count ever run with)
    assert rio1.group.covered == 3
    got = await rio1.group.read("c", 10, block_ms=0)
    assert sorted(e.run_id for e in got) == sorted(ids)
    assert all(await rio1.ack_many("c", [e.entry_id for e in got]))
    assert await queue_backlog(r, keys) == 0


async def test_a_blocked_read_wakes_for_a_run_on_any_shard(sharded):
    _, keys, rio, _ = sharded
    # Given a consumer waiting on an empty three-shard queue
    reader = asyncio.create_task(rio.group.read("c", 4, block_ms=5000))
    await asyncio.sleep(0.1)
    assert not reader.done()
    # When a run arrives on shard 2
    (rid,) = [x for x in ids_on_every_shard(keys, 1) if keys.shard_for(x) == 2]
    await rio.enqueue(QueuedRun(rid, "u"))
    # Then the read answers with it at once, not after its block time
    got = await asyncio.wait_for(reader, 2)
    assert [e.run_id for e in got] == [rid]


async def test_workers_run_runs_of_every_shard_end_to_end(sharded, store: Store, worker_factory):
    s, keys, rio, r = sharded
    # Given a worker on a three-shard queue and runs queued on each shard
    await worker_factory(s)
    runs = [await queued_run(store) for _ in range(9)]
    await rio.enqueue_many([QueuedRun(x.run_id, "u") for x in runs])
    # Then every run succeeds and the backlog goes back to zero

    async def all_done() -> bool:
        got = [await store.runs.get_run(x.run_id) for x in runs]
        return all(g is not None and g.status is RunStatus.SUCCEEDED for g in got)

    await wait_for(all_done, timeout=30, interval=0.05)

    async def drained() -> bool:
        return await queue_backlog(r, keys) == 0

    await wait_for(drained, timeout=10, interval=0.05)


async def test_metrics_and_status_show_the_backlog_per_shard_and_in_all(
    settings, api_factory, store, tmp_path
):
    import httpx

    from tests.cli_proc import cli_env, longrun
    from tests.test_ops_metrics import fast_cache, scrape, value

    # Given an API on a three-shard queue and 9 runs queued (no worker)
    s = settings.with_(queue_shards=3)
    srv = await api_factory(s)
    fast_cache(srv)
    _, key = await store.users.create_key("alice")
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        for _ in range(9):
            answer = await c.post("/runs", json={"input": "x", "agent": "ticker"})
            assert answer.status_code == 202
        # Then /metrics has the total and each shard's two streams, adding up to it
        m = await scrape(c)
    assert value(m, "longrun_queue_depth") == 9
    per_stream = [
        value(m, "longrun_queue_shard_depth", shard=str(i), stream=stream)
        for i in range(3)
        for stream in ("ready", "held")
    ]
    assert None not in per_stream
    assert sum(x or 0 for x in per_stream) == 9
    assert value(m, "longrun_queue_waiting") == 9
    # And `longrun status` says the same
    done = await longrun("status", "--json", env=cli_env(tmp_path, s, LONGRUN_QUEUE_SHARDS="3"))
    status = json.loads(done.out)
    assert status["backlog"] == 9
    assert [x["shard"] for x in status["shards"]] == [0, 1, 2]
    assert sum(x["held"] + x["ready"] for x in status["shards"]) == 9
    text = await longrun("status", env=cli_env(tmp_path, s, LONGRUN_QUEUE_SHARDS="3"))
    assert "shard 2: ready" in text.out
