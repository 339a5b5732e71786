"""Issue 18: a Redis Sentinel failover in the middle of 50 runs. The platform reaches Redis
through Sentinel (`redis+sentinel://`, the session's `redis_sentinel`: a primary, a replica, three
sentinels); the primary is killed while the runs are under way, the sentinels promote the
replica, and whatever asynchronous replication had not carried over is lost. Every run must
still succeed exactly once, gapless, with the three-way check (SSE received / Redis / Postgres
after the runs' Redis keys are deleted): what the failover lost is healed from the archive, as
after an empty restart. The agents' output differs per attempt (attempt_chat: the scripted chat
model tags each turn with its attempt), so a run stitched from two attempts is caught. A second
test freezes the primary (SIGSTOP) past the failover and thaws it: it wakes still a primary for
about ten seconds (a split brain), and no process of the platform may write to it then
(`shared.redis.failover`: Sentinel's switch notice closes every connection to it, and new ones
go to the announced primary only)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.chaos.conftest import StackFactory
from tests.chaos.stack import Stack
from tests.redis_cluster import LentTopology, LocalSentinel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

RUNS = 50


async def _fifty_followed_runs(make_stack: StackFactory, sentinel: LocalSentinel) -> Stack:
    """RUNS runs (half ticker, half attempt_chat, about 4 s each) on three workers that reach
    Redis through Sentinel, each followed over SSE; returned once each has sent some events."""
    stack = await make_stack(workers=3, redis=LentTopology(sentinel, f"lrs{uuid.uuid4().hex[:8]}"))
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
    return stack


async def test_a_sentinel_failover_mid_way_through_50_runs_ends_each_once_and_whole(
    make_stack: StackFactory, redis_sentinel: LocalSentinel
) -> None:
    # Given 50 runs (25 ticker, 25 attempt_chat, about 4 s each) on three workers that reach
    # Redis through Sentinel, each followed over SSE
    stack = await _fifty_followed_runs(make_stack, redis_sentinel)

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


async def test_a_primary_frozen_past_the_failover_wakes_to_a_split_brain_and_loses_nothing(
    make_stack: StackFactory, redis_sentinel: LocalSentinel
) -> None:
    # Given 50 runs on three workers that reach Redis through Sentinel, each followed over SSE
    stack = await _fifty_followed_runs(make_stack, redis_sentinel)

    # When the primary is frozen until its replica is promoted, then wakes still a primary:
    # clients that kept a connection to it write there until the sentinels turn it into the
    # new primary's replica, which drops what it took meanwhile
    t0 = time.monotonic()
    old, new = await redis_sentinel.freeze_primary()
    split_s = time.monotonic() - t0
    assert new != old

    # Then every run succeeds exactly once, and clients, Redis and the archive agree
    totals = await stack.check(redis_complete=False, settle_timeout=60)
    print(
        f"\nsentinel split brain under {RUNS} runs: runs={totals['runs']} "
        f"resumes={totals['resumes']} attempts={totals['attempts']} "
        f"reconnects={totals['reconnects']} split={split_s:.1f}s"
    )
