"""Fair and prioritised dispatch: the order a shard's pulls promote held runs in (round-robin
across users, higher priority first with a starvation bound for lower ones), measured with
real workers (another user's runs start within about one run-slot turnover of a flood), and
held under a SIGKILL (every run still runs exactly once)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from shared.config import Settings
from shared.models import QueuedRun, RunStatus
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import NewRun, Store
from tests.helpers import queue_backlog, read_events, submit, wait_for, wait_status
from tests.history import History, check
from tests.procs import WorkerProc, start_worker, stop_all


async def line(settings: Settings, **changes: Any) -> tuple[RedisIO, Any]:
    s = settings.with_(**changes)
    r = create_redis(s, "test")
    rio = RedisIO(r, Keys.from_settings(s), s)
    await rio.ensure_group()
    return rio, r


@pytest.fixture
async def rio(settings: Settings) -> AsyncIterator[RedisIO]:
    rio, r = await line(settings)
    try:
        yield rio
    finally:
        await r.aclose()


async def order(rio: RedisIO, n: int) -> list[str]:
    """The run ids of the next `n` pulls of one entry each (acked at once)."""
    out = []
    for _ in range(n):
        (entry,) = await rio.group.read("c", 1, block_ms=0)
        assert await rio.ack("c", entry.entry_id)
        out.append(entry.run_id)
    return out


async def test_a_flood_does_not_delay_another_users_runs(rio):
    # Given user A with 50 runs queued, then user B with 5
    await rio.enqueue_many([QueuedRun(f"a{i}", "A") for i in range(50)])
    await rio.enqueue_many([QueuedRun(f"b{i}", "B") for i in range(5)])
    # When workers take one run at a time
    got = await order(rio, 10)
    # Then A and B alternate: B's 5 go within the first 10 picks, in their order
    assert got == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]
    assert await queue_backlog(rio.r, rio.keys) == 45


async def test_without_fairness_the_queue_is_one_fifo(settings):
    rio, r = await line(settings, fair=False)
    try:
        await rio.enqueue_many([QueuedRun(f"a{i}", "A") for i in range(20)])
        await rio.enqueue_many([QueuedRun(f"b{i}", "B") for i in range(2)])
        got = await order(rio, 22)
        assert got == [f"a{i}" for i in range(20)] + ["b0", "b1"]
    finally:
        await r.aclose()


async def test_higher_priorities_go_first(rio):
    # Given low, then normal, then high runs queued, of two users
    for prio in ("low", "normal", "high"):
        await rio.enqueue_many([QueuedRun(f"{prio}-{u}", u, prio) for u in ("A", "B")])
    # Then high runs go first, then normal, then low, each level round-robin across users
    got = await order(rio, 6)
    assert got == ["high-A", "high-B", "normal-A", "normal-B", "low-A", "low-B"]


async def test_a_waiting_lower_priority_is_served_after_k_higher_picks(settings):
    # Given starvation bound K=3, and a steady supply of high runs while normal and low wait
    rio, r = await line(settings, priority_starvation=3)
    try:
        await rio.enqueue_many([QueuedRun(f"h{i}", "A", "high") for i in range(12)])
        await rio.enqueue_many([QueuedRun(f"n{i}", "A", "normal") for i in range(3)])
        await rio.enqueue_many([QueuedRun(f"l{i}", "A", "low") for i in range(2)])
        got = await order(rio, 17)
        # Then normal waits at most K high picks, and low at most K + 1 (when normal is due at
        # the same time, normal goes first)
        assert got == [
            *("h0", "h1", "h2", "n0", "l0"),
            *("h3", "h4", "h5", "n1", "l1"),
            *("h6", "h7", "h8", "n2"),
            *("h9", "h10", "h11"),
        ]
    finally:
        await r.aclose()


async def test_a_handed_over_run_goes_back_to_the_head_of_its_line(rio):
    await rio.enqueue_many([QueuedRun(f"a{i}", "A") for i in range(3)])
    (first,) = await rio.group.read("c", 1, block_ms=0)
    assert first.run_id == "a0"
    # When its worker hands it over (a drain), it is next again, not last
    assert await rio.handoff("c", first)
    (again,) = await rio.group.read("c", 1, block_ms=0)
    assert (again.run_id, again.handoffs, again.user_id) == ("a0", 1, "A")
    assert await queue_backlog(rio.r, rio.keys) == 3


# -- with real workers ---------------------------------------------------------------------


async def _insert(store: Store, user: str, n: int, params: dict[str, Any]) -> list[str]:
    out = []
    for _ in range(n):
        new = NewRun(user, "ticker", "x", params, {})
        out.append((await store.submits.insert_run(new, max_in_flight=1_000_000)).run_id)
    return out


@pytest.mark.parametrize("shards", [1, 2])
async def test_another_users_runs_start_within_a_turnover_of_a_flood(
    settings, store: Store, worker_factory, shards: int
):
    # Given user A's 200 queued runs (about 0.1 s each) and a worker with 4 slots at work
    s = settings.with_(concurrency=4, queue_shards=shards)
    rio, r = await line(s)
    try:
        params = {"count": 2, "interval_ms": 50}
        a_ids = await _insert(store, "A", 200, params)
        await rio.enqueue_many([QueuedRun(x, "A") for x in a_ids])
        await worker_factory(s)

        async def a_running() -> bool:
            runs = [await store.runs.get_run(x) for x in a_ids[:10]]
            return any(x is not None and x.status is not RunStatus.QUEUED for x in runs)

        await wait_for(a_running, timeout=20, interval=0.02)
        # When user B submits 5 runs
        b_ids = await _insert(store, "B", 5, params)
        t0 = time.monotonic()
        await rio.enqueue_many([QueuedRun(x, "B") for x in b_ids])

        async def b_started() -> bool:
            runs = [await store.runs.get_run(x) for x in b_ids]
            return all(x is not None and x.started_at is not None for x in runs)

        await wait_for(b_started, timeout=30, interval=0.02)
        waited = time.monotonic() - t0
        # Then on each shard holding B's runs, the runs of A that started there meanwhile
        # are at most one per B run of that shard (the round-robin alternates) plus a slot's
        # worth. Fairness is per shard: the other shard serves A meanwhile, as many runs as
        # the worker's reads take from it (counting them across shards made the bound depend
        # on how B's five runs fell: all on one shard, about once in sixteen, passed it).
        # Not A's backlog
        keys = Keys.from_settings(s)
        b_runs = [x for x in [await store.runs.get_run(x) for x in b_ids] if x is not None]
        a_runs = [x for x in [await store.runs.get_run(x) for x in a_ids] if x is not None]
        since = min(x.created_at for x in b_runs)
        for shard in {keys.shard_for(x.run_id) for x in b_runs}:
            mine = [x for x in b_runs if keys.shard_for(x.run_id) == shard]
            until = max(x.started_at for x in mine if x.started_at is not None)
            a_between = [
                x
                for x in a_runs
                if keys.shard_for(x.run_id) == shard
                and x.started_at is not None
                and since < x.started_at < until
            ]
            assert len(a_between) <= len(mine) + 4, (shard, len(mine), len(a_between), waited)
        a_waiting = [x for x in a_runs if x.started_at is None]
        assert len(a_waiting) > 100, len(a_waiting)
    finally:
        await r.aclose()


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[WorkerProc] = []

    async def make(s: Settings, name: str, **extra: str) -> WorkerProc:
        p = await start_worker(s, name, tmp_path, **extra)
        started.append(p)
        return p

    try:
        yield make
    finally:
        await stop_all(started)


@pytest.mark.slow
async def test_a_worker_killed_holding_promoted_runs_loses_and_repeats_nothing(
    settings, api_factory, api_key, procs, redis_client, store
):
    import httpx

    # Given a two-shard queue, two users' runs and two workers
    s = settings.with_(queue_shards=2, concurrency=6)
    env = {"LONGRUN_QUEUE_SHARDS": "2"}
    srv = await api_factory(s)
    _, bob_key = await store.users.create_key("bob")
    workers = [await procs(s, f"w{i}", **env) for i in range(2)]
    h = History()
    async with (
        httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        ) as alice,
        httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {bob_key}"}, timeout=30
        ) as bob,
    ):
        owner: dict[str, httpx.AsyncClient] = {}
        for i in range(16):
            c = alice if i % 4 else bob
            rid = await submit(c, agent="ticker", params={"count": 10, "interval_ms": 150})
            h.submitted(rid, count=10)
            owner[rid] = c
        # When one worker is killed while it holds promoted runs
        keys = Keys.from_settings(s)

        async def victim_holds() -> bool:
            for shard in range(2):
                try:
                    info = await redis_client.xinfo_consumers(keys.shard_queue(shard), keys.group)
                except ResponseError:  # the workers have not made it yet
                    continue
                if any(int(c["pending"]) > 0 and c["name"] in (b"w0", "w0") for c in info):
                    return True
            return False

        await wait_for(victim_holds, timeout=20, interval=0.05)
        workers[0].signal(signal.SIGKILL)
        # Then every run succeeds exactly once, gapless, and the backlog ends at zero
        for run_id, c in owner.items():
            run = await wait_status(c, run_id, "succeeded", "failed", timeout=60)
            h.statuses[run_id] = run["status"]
            _, h.events[run_id] = await read_events(c, run_id)
        h.read_worker_logs([p.log_path for p in workers])
        totals = check(h)
        assert totals["runs"] == 16
        assert await queue_backlog(redis_client, keys) == 0
