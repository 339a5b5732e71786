"""Postgres-side fencing: a worker's writes for a run hold only while its attempt owns it."""

from __future__ import annotations

import pytest

from shared.errors import LeaseLost
from shared.models import RunStatus, Transition, encode_event
from shared.store import EventBatch, Finishing, Store
from tests.helpers import queued_run


async def finish(store: Store, f: Finishing, thread: bool) -> None:
    """End a run the way a worker does: a thread's run alone, any other in a batch."""
    if thread:
        await store.runs.finish(f)
        return
    (refused,) = await store.batches.finish_many([f])
    if refused is not None:
        raise refused


@pytest.mark.parametrize("thread", [None, "t"])
async def test_a_stale_attempt_cannot_finish_or_archive(store, thread):
    # Given a run claimed twice (attempt 2 owns it now)
    run = await queued_run(store, thread_id=thread)
    await store.runs.claim(run.run_id, reclaim=False)
    owner = await store.runs.claim(run.run_id, reclaim=True)
    assert owner is not None
    assert owner.attempt == 2
    stale_events = [encode_event(1, {"type": "done", "output": "stale"})]

    # When attempt 1 tries to end it, to append events, or to checkpoint
    stale = Finishing(run.run_id, 1, Transition.SUCCEED, stale_events, output="stale")
    with pytest.raises(LeaseLost):
        await finish(store, stale, thread is not None)
    (refused,) = await store.events.append_many([EventBatch(run.run_id, 1, stale_events)])
    assert isinstance(refused, LeaseLost)
    with pytest.raises(LeaseLost):
        await store.runs.checkpoint(run.run_id, 1, [], step=1, state={})

    # Then nothing was written
    after = await store.runs.get_run(run.run_id)
    assert after is not None
    assert after.status is RunStatus.RUNNING
    assert after.output is None
    assert await store.runs.events_after(run.run_id, 0) == []
    # And the owner's finish goes through
    ok = Finishing(run.run_id, 2, Transition.SUCCEED, stale_events, output="ok")
    await finish(store, ok, thread is not None)
    done = await store.runs.get_run(run.run_id)
    assert done is not None
    assert done.status is RunStatus.SUCCEEDED
    assert [e.seq for e in await store.runs.events_after(run.run_id, 0)] == [1]
