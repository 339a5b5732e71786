"""Issue 14, cancels racing appends: a cancel that lands while an attempt appends a checkpointed
step's events must end the run `cancelled` at once, with every event it appended archived.

The race's window is the Redis round trip of the append each checkpoint makes: about 1% of
plain chat runs hit it. The runs here are agentic runs with quick tools, checkpointing every
few milliseconds, so a cancel at a random moment lands in the window in about a third of them
(20 runs: several each time)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from tests.chaos.conftest import StackFactory
from tests.chaos.followers import Received

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

RUNS = 20
CANCEL_BOUND = 2.0  # seconds from the cancel request to the run's `cancelled` event
# An agentic run with quick tools: 18 turns of two words (50 ms each), each calling six tools,
# every call checkpointed: at least 1.8 s long, so still running when its cancel comes (within
# 1.5 s), and under the default step budget (20) so that nothing but the cancel ends it; most
# of its time is spent in checkpoints, the race's window.
CHAT = {"words": 2, "delay_ms": 50, "tool_turns": 18, "calls": 6}


async def test_cancels_racing_appends_end_every_run_cancelled_at_once_with_a_whole_archive(
    make_stack: StackFactory,
) -> None:
    # Given three workers and 20 agentic attempt_chat runs followed over SSE
    stack = await make_stack(workers=3)
    assert stack.followers is not None
    rng = random.Random()

    # When each run is cancelled at a random moment 0-1.5 s after its submit
    cancelled_at: dict[str, float] = {}

    async def submit_then_cancel() -> None:
        run_id = await stack.submit("attempt_chat", CHAT, expect="cancelled")
        await asyncio.sleep(rng.uniform(0, 1.5))  # the moment of the cancel: the test's input
        cancelled_at[run_id] = time.monotonic()
        resp = await stack.client.post(f"/runs/{run_id}/cancel")
        assert resp.status_code == 202, resp.text

    await asyncio.gather(*(submit_then_cancel() for _ in range(RUNS)))

    # Then each run ends `cancelled` within 2 s of its cancel, and its log is whole everywhere
    with contextlib.suppress(AssertionError):  # the check below says which did not
        await stack.followers.until(lambda fs: all(f.ended for f in fs.values()), timeout=30)
    took = {}
    for run_id, f in stack.followers.by_run.items():
        end: Received | None = f.received[-1] if f.ended and f.received else None
        if end is not None and end.event == "cancelled":
            took[run_id] = end.at - cancelled_at[run_id]
    late = [
        f"{r[:8]}: {took[r]:.1f}s" if r in took else f"{r[:8]}: never"
        for r in stack.followers.by_run
        if took.get(r, float("inf")) > CANCEL_BOUND
    ]
    problems = []
    if late:
        problems.append(f"{len(late)} runs not cancelled within {CANCEL_BOUND}s: {late}")
    totals = await stack.check(extra_problems=problems)
    slowest = max(took.values(), default=0.0)
    print(
        f"\ncancels racing appends: runs={totals['runs']} faults={RUNS} "
        f"slowest_cancel={slowest:.2f}s resumes={totals['resumes']}"
    )
