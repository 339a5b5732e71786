"""Issue 18: the core of the fault suite on a real 3-primary Redis Cluster (the session's
`redis_cluster`, tests/redis_cluster.py): a worker killed mid-run, a worker frozen past its
lease, and every primary restarted empty, under runs whose keys live on all three primaries.
Each ends with the three-way check (tests/chaos/truth.py): what SSE clients received, what the
cluster holds and what Postgres archived (replayed through the API after the runs' Redis keys
are deleted) must be one gapless log per run, with one ending."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from tests.chaos.conftest import StackFactory
from tests.chaos.stack import Stack
from tests.chaos.test_truth_redis import recovery
from tests.helpers import wait_for
from tests.redis_cluster import LentTopology, LocalCluster, open_redis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

LEASE = 2.0  # BASE_ENV's LONGRUN_LEASE_SECONDS


def lent(cluster: LocalCluster) -> LentTopology:
    return LentTopology(cluster, f"lrc{uuid.uuid4().hex[:8]}")


async def held_by(stack: Stack) -> dict[str, int]:
    """Queue entries each worker holds (pending in the consumer group)."""
    r = open_redis(stack.redis.url)
    try:
        info = await r.xinfo_consumers(stack.keys.queue, stack.keys.group)
    finally:
        await r.aclose()
    return {
        (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
        for c in info
    }


async def all_claimed(stack: Stack) -> dict[str, int]:
    """Until every run's entry is held by a worker (runs under way); the holdings then. (Not
    timed by the SSE followers: on a cluster the API's event hub, whose one XREAD names
    streams of many slots, fails over to per-subscriber reads, so they lag; issue 15's hub
    on shard channels replaces it.)"""
    held: dict[str, int] = {}

    async def claimed() -> bool:
        nonlocal held
        held = await held_by(stack)
        return sum(held.values()) == len(stack.truth.runs)

    try:
        await wait_for(claimed, 20)
    except AssertionError:
        raise AssertionError(f"not every run was under way at once: {held}") from None
    await asyncio.sleep(1.0)  # a quarter of the way through
    return held


async def submit_long_mix(stack: Stack) -> None:
    """3 ticker and 3 attempt_chat runs of about 4 s each, interleaved, each followed."""
    for _ in range(3):
        await stack.submit("ticker", {"count": 40, "interval_ms": 100})
        await stack.submit("attempt_chat", {"words": 20, "delay_ms": 90})


async def spread(stack: Stack, cluster: LocalCluster) -> int:
    """On how many primaries the runs' event streams live."""
    return len({await cluster.port_of(stack.keys.events(r)) for r in stack.truth.runs})


async def test_a_worker_killed_mid_run_on_a_cluster_leaves_one_whole_log_per_run(
    make_stack: StackFactory, redis_cluster: LocalCluster
) -> None:
    # Given three workers on a cluster running 6 runs (3 ticker, 3 attempt_chat), followed
    stack = await make_stack(workers=3, redis=lent(redis_cluster))
    assert stack.followers is not None
    await submit_long_mix(stack)
    assert await spread(stack, redis_cluster) > 1
    held = await all_claimed(stack)
    victim = max(stack.workers, key=lambda w: held.get(w.name, 0))
    assert held.get(victim.name, 0) > 0

    # When the worker holding the most runs is killed outright
    at_kill = stack.followers.snapshot()
    t0 = time.monotonic()
    victim.signal(signal.SIGKILL)

    # Then the others take its runs over, and clients, the cluster and the archive agree
    recovered = await stack.followers.progressed(at_kill, timeout=20, events=2)
    totals = await stack.check()
    print(
        f"\ncluster worker SIGKILL 1/3: runs={totals['runs']} held={held[victim.name]} "
        f"resumes={totals['resumes']} recovered_in={recovered:.1f}s "
        f"total={time.monotonic() - t0:.1f}s"
    )


async def test_a_worker_frozen_past_its_lease_on_a_cluster_is_fenced_out(
    make_stack: StackFactory, redis_cluster: LocalCluster
) -> None:
    # Given two workers on a cluster running 6 runs
    stack = await make_stack(workers=2, redis=lent(redis_cluster))
    assert stack.followers is not None
    await submit_long_mix(stack)
    held = await all_claimed(stack)
    victim = max(stack.workers, key=lambda w: held.get(w.name, 0))
    assert held.get(victim.name, 0) > 0

    # When the worker holding the most runs is frozen (SIGSTOP) for twice its lease, then
    # thawed: its runs were re-claimed meanwhile, and what it still tries to write is fenced
    at_stop = stack.followers.snapshot()
    victim.signal(signal.SIGSTOP)
    try:
        recovered = await stack.followers.progressed(at_stop, timeout=20, events=2)
        await asyncio.sleep(max(0.0, 2 * LEASE - recovered))
    finally:
        victim.signal(signal.SIGCONT)

    # Then every run ended once, whole: no seq written twice, nothing stitched
    totals = await stack.check()
    print(
        f"\ncluster worker SIGSTOP {2 * LEASE:.0f}s: runs={totals['runs']} "
        f"held={held[victim.name]} resumes={totals['resumes']} recovered_in={recovered:.1f}s"
    )


@pytest.mark.timeout(120)
async def test_every_primary_restarted_empty_reuses_no_seq_and_stalls_no_run(
    make_stack: StackFactory, redis_cluster: LocalCluster
) -> None:
    # Given 6 runs on three workers, their keys on every primary of a cluster without
    # persistence
    stack = await make_stack(workers=3, redis=lent(redis_cluster))
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.followers.each_received(10, timeout=30)

    # When every primary dies 1 s into the runs and comes back empty (same slots)
    await redis_cluster.restart_empty()

    # Then every run moves again within a few seconds, and clients, the cluster and the
    # archive agree on every seq
    took, problems = await recovery(stack)
    totals = await stack.check(redis_complete=False, extra_problems=problems)
    print(
        f"\ncluster restarted empty: runs={totals['runs']} resumes={totals['resumes']} "
        f"moving_again_in={took}s"
    )
