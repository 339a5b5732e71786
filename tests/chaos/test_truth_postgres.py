"""Issue 14, Postgres' side: the truth's own server crashing (`pg_ctl stop -m immediate`) and
stalling (every Postgres process frozen with SIGSTOP) past the lease, under runs in flight. A
run must neither die nor execute twice, and it ends exactly once. Every test ends with the
three-way check (tests/chaos/truth.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos.conftest import StackFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

OUTAGE_SECONDS = 6.0
STALL_SECONDS = 5.0  # two and a half leases


async def test_postgres_crashing_under_runs_ends_each_exactly_once_without_a_second_execution(
    make_stack: StackFactory,
) -> None:
    # Given 6 runs (3 ticker, 3 attempt_chat) on three workers, each followed over SSE
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.followers.each_received(10, timeout=30)

    # When Postgres crashes 1 s into them and comes back 6 s later (the runs' ends fall inside)
    await stack.cluster.stop_immediate()
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself
    t0 = time.monotonic()
    await stack.cluster.start()

    # Then every run ends once, by its first execution, and all three views agree
    stuck = await stack.truth.wait_terminal(stack.dsn, timeout=30)
    ended_in = time.monotonic() - t0
    totals = await stack.check(max_attempts=1)
    assert not stuck
    print(
        f"\npostgres stop -m immediate {OUTAGE_SECONDS:.0f}s: runs={totals['runs']} faults=1 "
        f"attempts={totals['attempts']} all_ended_in={ended_in:.1f}s after restart"
    )


async def test_postgres_stalled_past_the_lease_neither_kills_nor_duplicates_a_run(
    make_stack: StackFactory,
) -> None:
    # Given 6 runs (3 ticker, 3 attempt_chat) on three workers with a 2 s lease
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await stack.followers.each_received(10, timeout=30)

    # When every Postgres process is frozen for two and a half leases, then thawed
    frozen = await stack.cluster.sigstop()
    await asyncio.sleep(STALL_SECONDS)  # the stall itself
    t0 = time.monotonic()
    await stack.cluster.sigcont()

    # Then each run goes on under its first attempt and succeeds once
    stuck = await stack.truth.wait_terminal(stack.dsn, timeout=30)
    ended_in = time.monotonic() - t0
    totals = await stack.check(max_attempts=1)
    assert not stuck
    print(
        f"\npostgres SIGSTOP {STALL_SECONDS:.0f}s ({frozen} processes): runs={totals['runs']} "
        f"faults=1 attempts={totals['attempts']} all_ended_in={ended_in:.1f}s after SIGCONT"
    )
