"""Issue 14, the workers' side: workers killed with SIGKILL mid-run (one of three, and all three)
and workers drained one after another with SIGTERM (a rolling deploy). Each run is followed
over SSE, and every test ends with the three-way check (tests/chaos/truth.py): what clients
saw, what Redis holds and what Postgres archived must be one log."""

from __future__ import annotations

import signal
import time

import pytest
import redis.asyncio as aioredis

from tests.chaos.conftest import StackFactory
from tests.chaos.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def held_by(stack: Stack) -> dict[str, int]:
    """Queue entries each worker holds (pending in the consumer group)."""
    r = aioredis.Redis.from_url(stack.redis.url)
    try:
        info = await r.xinfo_consumers(stack.keys.queue, stack.keys.group)
    finally:
        await r.aclose()
    return {
        (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
        for c in info
    }


async def test_one_worker_of_three_killed_mid_run_leaves_no_hole_and_no_stitching(
    make_stack: StackFactory,
) -> None:
    # Given three workers running 6 runs (3 ticker, 3 attempt_chat), each followed over SSE
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.runs_under_way()
    held = await held_by(stack)
    victim = max(stack.workers, key=lambda w: held.get(w.name, 0))
    assert held.get(victim.name, 0) > 0

    # When the worker holding the most runs is killed outright, 1.2 s into them
    at_kill = stack.followers.snapshot()
    t0 = time.monotonic()
    victim.signal(signal.SIGKILL)

    # Then the other two take its runs over within a lease or so, and every run's log is the
    # same for the clients, Redis and the archive: gapless, one ending, nothing stitched
    recovered = await stack.followers.progressed(at_kill, timeout=20, events=2)
    totals = await stack.check()
    print(
        f"\nworker SIGKILL 1/3: runs={totals['runs']} held_by_victim={held[victim.name]} "
        f"resumes={totals['resumes']} recovered_in={recovered:.1f}s "
        f"total={time.monotonic() - t0:.1f}s"
    )


async def test_all_three_workers_killed_mid_run_then_new_ones_finish_every_run_whole(
    make_stack: StackFactory,
) -> None:
    # Given three workers running 6 runs (3 ticker, 3 attempt_chat), each followed over SSE
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.runs_under_way()

    # When all three are killed outright 1.2 s into the runs, and three new workers start
    at_kill = stack.followers.snapshot()
    for w in list(stack.workers):
        w.signal(signal.SIGKILL)
    for w in list(stack.workers):
        await w.wait(10)
    await stack.add_workers(3, prefix="new")

    # Then the new workers finish every run, and clients, Redis and the archive agree
    recovered = await stack.followers.progressed(at_kill, timeout=20, events=2)
    totals = await stack.check()
    assert totals["resumes"] >= 1
    print(
        f"\nworker SIGKILL 3/3: runs={totals['runs']} faults=3 resumes={totals['resumes']} "
        f"recovered_in={recovered:.1f}s"
    )


async def test_a_rolling_sigterm_of_every_worker_hands_runs_over_without_a_trace(
    make_stack: StackFactory,
) -> None:
    # Given three workers (drain 1 s) running 6 runs of about 4 s, each followed over SSE
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    for _ in range(3):
        await stack.submit("ticker", {"count": 40, "interval_ms": 100})
        await stack.submit("attempt_chat", {"words": 10, "delay_ms": 90, "tool_turns": 2})
    await stack.followers.each_received(5, timeout=30)

    # When each worker in turn gets a replacement and then SIGTERM, as a rolling deploy does
    t0 = time.monotonic()
    for i, old in enumerate(list(stack.workers)):
        await stack.add_worker(f"next{i}")
        before = stack.followers.snapshot()
        old.signal(signal.SIGTERM)
        assert await old.wait(15) == 0
        await stack.followers.progressed(before, timeout=15)

    # Then the runs moved between workers without a gap, a repeat or a second ending
    totals = await stack.check()
    assert totals["resumes"] >= 1
    assert any('"run_handed_over"' in w.log() for w in stack.workers)
    print(
        f"\nrolling SIGTERM: runs={totals['runs']} faults=3 resumes={totals['resumes']} "
        f"rolled_in={time.monotonic() - t0:.1f}s"
    )
