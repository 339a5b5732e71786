"""An idle worker's wait for work (`GroupIO.read`): it watches the held streams and, in the same
round trip, pulls as soon as a run is added, so a run submitted to an idle worker reaches it
after one wake-up, not a wake-up and then a pull of its own (bench.stream_ttft's pickup)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.config import Settings
from shared.models import QueuedRun
from shared.redis.client import create_redis
from shared.redis.group import GroupIO
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from tests.helpers import wait_for
from tests.test_queue_shards import ids_on_every_shard


@pytest.fixture(params=[1, 3], ids=["one-shard", "three-shards"])
async def line(settings: Settings, request: Any) -> AsyncIterator[tuple[RedisIO, str]]:
    s = settings.with_(queue_shards=request.param)
    name = f"wait-{uuid.uuid4().hex[:8]}"
    r = create_redis(s, name)
    rio = RedisIO(r, Keys.from_settings(s), s)
    await rio.ensure_group()
    try:
        yield rio, name
    finally:
        await r.aclose()


async def _waiting(rio: RedisIO, name: str) -> None:
    """Until this client's connection is blocked in its XREAD."""

    async def blocked() -> bool:
        clients = await rio.r.client_list()
        return any(c["name"] == name and c["cmd"] == "xread" and "b" in c["flags"] for c in clients)

    await wait_for(blocked, timeout=5, interval=0.01)


def _counted_pulls(group: GroupIO) -> list[int]:
    """The shards `group.pull` is called for, as it is called (it still pulls)."""
    calls: list[int] = []
    pull = group.pull

    async def counting(shard: int, consumer: str, count: int) -> Any:
        calls.append(shard)
        return await pull(shard, consumer, count)

    group.pull = counting  # type: ignore[method-assign]
    return calls


async def test_a_run_added_while_a_worker_waits_reaches_it_in_the_waits_round_trip(line):
    rio, name = line
    calls = _counted_pulls(rio.group)
    for shard in range(rio.keys.shards):
        # Given a worker waiting for work on an empty queue (its sweep pulled every shard)
        calls.clear()
        reading = asyncio.create_task(rio.group.read("w1", 4, block_ms=5000))
        await _waiting(rio, name)
        swept = len(calls)
        assert swept == rio.keys.shards
        # When a run is queued on one shard
        run_id = next(r for r in ids_on_every_shard(rio.keys, 1) if rio.keys.shard_for(r) == shard)
        await rio.enqueue_many([QueuedRun(run_id, "u")])
        got = await asyncio.wait_for(reading, 5)
        # Then the worker has it, and no pull of its own came after the wait for the shard
        # pulled with it: on one shard none at all; on three, each other shard once
        after = calls[swept:]
        assert [e.run_id for e in got] == [run_id]
        assert len(after) == len(set(after)) == rio.keys.shards - 1
        # And the run is taken: delivered to this worker in the group, to no other
        assert await rio.group.read("w2", 4, block_ms=0) == []
        assert await rio.ack("w1", got[0].entry_id)


async def test_a_wait_whose_pull_script_redis_forgot_still_brings_the_run(line):
    rio, name = line
    # Given a worker waiting, whose pull script Redis does not know (restarted, flushed)
    rio.group._pull.sha = "0" * 40
    reading = asyncio.create_task(rio.group.read("w1", 4, block_ms=5000))
    await _waiting(rio, name)
    # When a run is queued
    run_id = str(uuid.uuid4())
    await rio.enqueue_many([QueuedRun(run_id, "u")])
    # Then the worker loads the script again and takes the run
    got = await asyncio.wait_for(reading, 5)
    assert [e.run_id for e in got] == [run_id]
    assert rio.group._pull.sha != "0" * 40
