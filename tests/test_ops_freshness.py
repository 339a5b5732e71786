"""What processes leave in Redis stays as fresh as the process: an API process's hub
subscriptions end with it, and a worker's in-flight figure follows
its slots, not its heartbeat, so `/health` sees a cancelled run leave within about a second."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from shared.config import Settings
from shared.redis.keys import Keys
from shared.store import NewRun, Store
from tests.helpers import submit, wait_for, wait_status
from tests.procs import start_worker, stop_all
from tests.test_ops_shutdown import start_api

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


async def _shard_subscribers(r: aioredis.Redis, channel: str) -> int:
    reply = await r.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


async def test_a_killed_api_process_leaves_no_hub_subscription_behind(
    settings: Settings, store: Store, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    keys = Keys.from_settings(settings)
    # Given an API process following a queued run (its hub subscribed to the run's channel)
    api = await start_api(settings, tmp_path, "api-hub")
    _, key = await store.users.create_key("alice")
    run = await store.submits.insert_run(
        NewRun("alice", "ticker", "x", {}, {}), max_in_flight=1_000_000
    )
    channel = keys.run_channel(run.run_id)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        follow = asyncio.create_task(c.get(f"/runs/{run.run_id}/events"))
        try:

            async def subscribed() -> bool:
                return await _shard_subscribers(redis_client, channel) == 1

            await wait_for(subscribed, timeout=10)
            # When the process is killed
            api.proc.kill()
            await api.proc.wait()
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await follow
            if api.proc.returncode is None:
                api.proc.kill()
                await api.proc.wait()

    # Then its subscription ends with its connection, and it left no key of its own
    async def gone() -> bool:
        return await _shard_subscribers(redis_client, channel) == 0

    await wait_for(gone, timeout=5, interval=0.1)
    assert [k async for k in redis_client.scan_iter(match=f"{keys.prefix}:hub:*")] == []


async def test_health_in_flight_follows_a_cancelled_run_within_a_second(
    settings: Settings, api_factory: Any, api_key: str, tmp_path: Path
) -> None:
    # Given a worker process whose heartbeat comes every 10 s, running a long run
    s = settings.with_(lease_seconds=30.0)
    srv = await api_factory(s)
    worker = await start_worker(s, "w-load", tmp_path)
    try:
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
        ) as c:

            async def in_flight() -> Any:
                return (await c.get("/health")).json()["runs_in_flight"]

            run_id = await submit(c, agent="ticker", params={"count": 2000, "interval_ms": 50})
            await wait_status(c, run_id, "running", timeout=30)
            await wait_for(lambda: _equals(in_flight, 1), timeout=30, interval=0.1)
            # When it is cancelled
            assert (await c.post(f"/runs/{run_id}/cancel")).status_code == 202
            await wait_status(c, run_id, "cancelled", timeout=30)
            # Then /health stops counting it within about a second
            await wait_for(lambda: _equals(in_flight, 0), timeout=1.5, interval=0.05)
    finally:
        await stop_all([worker])


async def _equals(read: Any, expected: int) -> bool:
    return bool(await read() == expected)
