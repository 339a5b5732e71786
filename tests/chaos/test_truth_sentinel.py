"""Issue 18: a Redis Sentinel failover in the middle of 50 runs. The platform reaches Redis
through Sentinel (`redis+sentinel://`, the session's `redis_sentinel`: a primary, a replica, three
sentinels); the primary is killed while the runs are under way, the sentinels promote the
replica, and whatever asynchronous replication had not carried over is lost. Every run must
still succeed exactly once, gapless, with the three-way check (SSE received / Redis / Postgres
after the runs' Redis keys are deleted): what the failover lost is healed from the archive, as
after an empty restart. The agents' output differs per attempt (attempt_chat: the scripted chat
model tags each turn with its attempt), so a run stitched from two attempts is caught."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.chaos.conftest import StackFactory
from tests.redis_cluster import LentTopology, LocalSentinel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

RUNS = 50


async def test_a_sentinel_failover_mid_way_through_50_runs_ends_each_once_and_whole(
    make_stack: StackFactory, redis_sentinel: LocalSentinel
) -> None:
    # Given 50 runs (25 ticker, 25 attempt_chat, about 4 s each) on three workers that reach
    # Redis through Sentinel, each followed over SSE
    stack = await make_stack(
        workers=3, redis=LentTopology(redis_sentinel, f"lrs{uuid.uuid4().hex[:8]}")
    )
    assert stack.followers is not None
    await asyncio.gather(
        *(
            stack.submit("ticker", {"count": 40, "interval_ms": 100})
            if i % 2
            else stack.submit("attempt_chat", {"words": 20, "delay_ms": 90})
            for i in range(RUNS)
        )
    )
    await stack.followers.each_received(6, timeout=60)

    # When the primary is killed mid-way: the sentinels promote the replica
    t0 = time.monotonic()
    old = await redis_sentinel.primary_port()
    new = await redis_sentinel.failover()
    failover_s = time.monotonic() - t0
    assert new != old

    # Then every run succeeds exactly once, and clients, Redis and the archive agree
    totals = await stack.check(redis_complete=False, settle_timeout=60)
    print(
        f"\nsentinel failover under {RUNS} runs: runs={totals['runs']} "
        f"resumes={totals['resumes']} attempts={totals['attempts']} "
        f"reconnects={totals['reconnects']} failover={failover_s:.1f}s "
        f"total={time.monotonic() - t0:.1f}s"
    )
