"""Issue 14, Redis' side: Redis losing data under runs in flight, as a host crash with
`appendfsync everysec` does (killed, its append-only file cut back to a second before) and as a
restart without persistence does (empty). No seq a client received may come back with other
content, and every run must continue, or be queued again, within a few seconds. Every test ends
with the three-way check (tests/chaos/truth.py); Redis may hold only the events after the
fault, but whatever it holds must be the archive's."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import StackFactory
from tests.chaos.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

RECOVERY_BOUND = 5.0  # seconds until every run is moving again


async def recovery(stack: Stack) -> tuple[float | None, list[str]]:
    """Seconds until every unfinished run sent its followers a new event after the fault (None:
    not within 30 s), and the problem if that is over RECOVERY_BOUND."""
    assert stack.followers is not None
    at_fault = stack.followers.snapshot()
    try:
        took: float | None = await stack.followers.progressed(at_fault, timeout=30)
    except AssertionError:
        took = None
    if took is None or took > RECOVERY_BOUND:
        shown = "more than 30" if took is None else f"{took:.1f}"
        return took, [f"runs moved again {shown}s after Redis came back, over {RECOVERY_BOUND}s"]
    return took, []


async def test_redis_losing_its_last_second_reuses_no_seq_and_stalls_no_run(
    make_stack: StackFactory,
) -> None:
    # Given 6 runs (3 ticker, 3 attempt_chat) on three workers, and a Redis with an AOF
    # (appendfsync everysec)
    stack = await make_stack(workers=3, aof=True)
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.followers.each_received(4, timeout=30)

    # When, a second of progress later, Redis dies and comes back with its AOF cut back to
    # the mark: every write of that second (events clients saw, acks, deliveries) is gone
    stack.redis.mark()
    await stack.followers.progressed(stack.followers.snapshot(), timeout=10, events=8)
    lost = await stack.redis.lose_since_mark()

    # Then every run moves again within a few seconds, and clients, Redis and the archive
    # agree on every seq
    took, problems = await recovery(stack)
    totals = await stack.check(redis_complete=False, extra_problems=problems)
    print(
        f"\nredis lost its last second ({lost} AOF bytes): runs={totals['runs']} faults=1 "
        f"resumes={totals['resumes']} moving_again_in={took}s"
    )


async def test_redis_restarted_empty_reuses_no_seq_and_stalls_no_run(
    make_stack: StackFactory,
) -> None:
    # Given 6 runs (3 ticker, 3 attempt_chat) on three workers, Redis without persistence
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.followers.each_received(10, timeout=30)

    # When Redis dies 1 s into the runs and comes back empty
    await stack.redis.restart_empty()

    # Then every run moves again within a few seconds, and clients, Redis and the archive
    # agree on every seq
    took, problems = await recovery(stack)
    totals = await stack.check(redis_complete=False, extra_problems=problems)
    print(
        f"\nredis restarted empty: runs={totals['runs']} faults=1 resumes={totals['resumes']} "
        f"moving_again_in={took}s"
    )
