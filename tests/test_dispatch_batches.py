"""Grouped worker writes keep per-run fencing: in one batch, a stale attempt's claim, fence,
append or terminal commit is refused for that run alone, and the others go through."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from shared.errors import LeaseLost
from shared.models import QueuedRun, RunStatus, Transition, encode_event
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import Fence, Gap, RedisIO
from shared.store import EventBatch, Finishing, Store
from shared.store.batches import FINISH_MANY, finish_many_args
from shared.store.rows import NewRun
from tests.helpers import queued_run, wait_for
from worker.attempt import AttemptState
from worker.batches import RunWrites, Written


async def _runs(store: Store, n: int) -> list[str]:
    return [(await queued_run(store)).run_id for _ in range(n)]


async def test_one_batch_claims_each_run_once_and_skips_what_it_may_not_take(store):
    # Given two queued runs and one already running
    queued = await _runs(store, 2)
    running = (await _runs(store, 1))[0]
    await store.runs.claim(running, reclaim=False)

    # When one statement claims them all, the first queued run named twice
    got = await store.batches.claim_many(
        [(queued[0], False), (running, False), (queued[1], False), (queued[0], False)]
    )

    # Then each queued run is claimed once (attempt 1), the running one is not taken by a
    # fresh delivery, and the duplicate entry gets nothing
    assert [r.attempt if r else None for r in got] == [1, None, 1, None]
    # And a re-claimed entry may take over the running run
    (taken,) = await store.batches.claim_many([(running, True)])
    assert taken is not None
    assert taken.attempt == 2


async def test_a_stale_attempt_in_a_finish_batch_is_refused_alone(store):
    # Given three running runs, the second re-claimed (attempt 2 owns it)
    ids = await _runs(store, 3)
    for run_id in ids:
        await store.runs.claim(run_id, reclaim=False)
    await store.runs.claim(ids[1], reclaim=True)

    def finishing(run_id: str, attempt: int) -> Finishing:
        events = [encode_event(1, {"type": "done", "output": run_id})]
        return Finishing(run_id, attempt, Transition.SUCCEED, events, output=run_id)

    # When one statement ends all three with attempt 1
    out = await store.batches.finish_many([finishing(r, 1) for r in ids])

    # Then only the stale one is refused, and nothing of it is written
    assert out[0] is None
    assert isinstance(out[1], LeaseLost)
    assert out[2] is None
    for run_id, status in zip(ids, ["succeeded", "running", "succeeded"], strict=True):
        run = await store.runs.get_run(run_id)
        assert run is not None
        assert run.status is RunStatus(status)
        archived = [e.seq for e in await store.runs.events_after(run_id, 0)]
        assert archived == ([] if status == "running" else [1])
        assert run.output == (None if status == "running" else run_id)


@pytest.fixture
async def rio(settings):
    r = create_redis(settings, "test-dispatch")
    io = RedisIO(r, Keys.from_settings(settings), settings, batched=True)
    await io.ensure_group()
    try:
        yield io
    finally:
        await r.aclose()


async def test_fences_and_ends_in_one_round_trip_are_refused_per_run(settings, store, rio):
    # Given three runs claimed by attempt 1, the third then re-claimed by attempt 2
    ids = await _runs(store, 3)
    for run_id in ids:
        await store.runs.claim(run_id, reclaim=False)
    fences = await rio.fence_many([(r, 1, "w", "") for r in ids])
    assert all(isinstance(f, Fence) for f in fences)
    await store.runs.claim(ids[2], reclaim=True)
    (later,) = await rio.fence_many([(ids[2], 2, "w2", "")])
    assert isinstance(later, Fence)
    # (an older attempt cannot raise its fence again)
    (stale,) = await rio.fence_many([(ids[2], 1, "w", "")])
    assert isinstance(stale, LeaseLost)

    # When attempt 1 ends all three through RunWrites, in one flush
    writes = RunWrites(store, rio, "w")
    try:
        outcomes = []
        for run_id in ids:
            events = [encode_event(1, {"type": "done", "output": "x"})]
            copy = rio.append_call(run_id, 1, events, ttl=60, terminal=True)
            item = Finishing(run_id, 1, Transition.SUCCEED, events, output="x")
            outcomes.append(writes.end(item, copy))
        got = await asyncio.gather(*outcomes, return_exceptions=True)
    finally:
        await writes.close()

    # Then the two current attempts are committed, then copied to Redis; the stale one is
    # refused by Postgres and so never reaches Redis
    assert all(isinstance(g, Written) and g.redis is not None for g in got[:2])
    assert isinstance(got[2], LeaseLost)
    assert [e.seq for e in await rio.events_after(ids[0], 0)] == [1]
    assert await rio.events_after(ids[2], 0) == []
    run = await store.runs.get_run(ids[2])
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert await store.runs.events_after(ids[2], 0) == []


async def test_an_event_batch_commits_only_where_it_continues_its_attempts_log(store):
    # Given three running runs; the second re-claimed by attempt 2; the third at seq 1
    ids = await _runs(store, 3)
    for run_id in ids:
        await store.runs.claim(run_id, reclaim=False)
    await store.runs.claim(ids[1], reclaim=True)
    one = [encode_event(1, {"type": "start", "agent": "ticker"})]
    assert await store.events.append_many([EventBatch(ids[2], 1, one)]) == [None]

    # When attempt 1 commits seq 1-2 to all three in one statement
    events = [encode_event(1, {"type": "start"}), encode_event(2, {"type": "token", "text": "1"})]
    out = await store.events.append_many([EventBatch(r, 1, events) for r in ids])

    # Then the first commits; the stale attempt and the batch that does not follow its log
    # (seq 1 is there already) write nothing
    assert out[0] is None
    assert isinstance(out[1], LeaseLost)
    assert isinstance(out[2], LeaseLost)
    assert [e.seq for e in await store.runs.events_after(ids[0], 0)] == [1, 2]
    assert await store.runs.events_after(ids[1], 0) == []
    assert [e.data for e in await store.runs.events_after(ids[2], 0)] == [one[0].data]
    # And the log's end and size moved with the first run's commit only
    first = await store.runs.get_run(ids[0])
    assert first is not None
    assert (first.last_seq, first.event_bytes) == (2, sum(len(e.data) for e in events))


async def test_a_retried_commit_whose_first_try_landed_is_settled_by_reading(store):
    # Given a batch committed once (its reply lost, say)
    (run_id,) = await _runs(store, 1)
    await store.runs.claim(run_id, reclaim=False)
    events = [encode_event(1, {"type": "start"}), encode_event(2, {"type": "token", "text": "a"})]
    batch = EventBatch(run_id, 1, events)
    assert await store.events.append_many([batch]) == [None]

    # When the attempt sends it again
    again = await store.events.append_many([batch])

    # Then it is told the batch is committed, and nothing is written twice
    assert again == [None]
    assert [e.seq for e in await store.runs.events_after(run_id, 0)] == [1, 2]
    # And the same holds for a terminal commit sent twice
    done = Finishing(run_id, 1, Transition.SUCCEED, [encode_event(3, {"type": "done"})])
    assert await store.batches.finish_many([done]) == [None]
    assert await store.batches.finish_many([done]) == [None]
    # But another attempt's ending is refused, and the run stays as the first one left it
    other = Finishing(run_id, 2, Transition.FAIL, [encode_event(3, {"type": "error"})])
    (refused,) = await store.batches.finish_many([other])
    assert isinstance(refused, LeaseLost)
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert (run.status, run.last_seq) == (RunStatus.SUCCEEDED, 3)


async def test_the_redis_copy_skips_what_it_has_reports_a_hole_and_closes_with_the_end(
    settings, rio
):
    run_id = "00000000-0000-4000-8000-000000000001"
    ev = [encode_event(i, {"type": "token", "text": str(i)}) for i in range(1, 9)]
    # Given seqs 1-2 copied by attempt 1
    await rio.append(run_id, 1, ev[0:2])
    # When a retry sends 1-3, then a copy starts at 5 (Redis missed 4)
    await rio.append(run_id, 1, ev[0:3])
    gap = await rio.append(run_id, 1, ev[4:5])
    # Then the hole is reported, with where Redis stands, and nothing is added
    assert gap == Gap(redis_seq=3)
    # And a copy allowed to leave the hole takes it, even once the meta hash is lost (the
    # stream's last id says where it stands)
    await rio.append(run_id, 1, ev[4:5], gaps=True)
    await rio.r.delete(rio.keys.run_meta(run_id))
    await rio.append(run_id, 1, ev[4:6])
    assert [e.seq for e in await rio.events_after(run_id, 0)] == [1, 2, 3, 5, 6]
    # And an older attempt is refused once a newer one copied
    await rio.append(run_id, 2, ev[6:7])
    with pytest.raises(LeaseLost):
        await rio.append(run_id, 1, ev[7:8])
    # And once the terminal event is in, nothing after it is taken, from any writer
    end = encode_event(8, {"type": "done"})
    await rio.append(run_id, 2, [end], ttl=60, terminal=True)
    with pytest.raises(LeaseLost):
        await rio.append(run_id, 0, [encode_event(9, {"type": "cancelled"})], terminal=True)
    assert [e.seq for e in await rio.events_after(run_id, 0)] == [1, 2, 3, 5, 6, 7, 8]


async def test_a_finished_attempt_leaves_nothing_to_the_cyclic_collector(settings, store, worker):
    # Given the cyclic collector off (what it would have to free stays in memory)
    gc.collect()
    gc.disable()
    try:
        rio = worker.rio
        assert rio is not None
        ids = await _runs(store, 5)
        for run_id in ids:
            await rio.enqueue(QueuedRun(run_id, "u"))

        # When five ticker runs go through the worker
        async def all_done() -> bool:
            runs = [await store.runs.get_run(r) for r in ids]
            ended = all(r is not None and r.status is RunStatus.SUCCEEDED for r in runs)
            return ended and not worker.slots and not worker.acking

        await wait_for(all_done, timeout=20, interval=0.02)

        # Then no attempt outlives its run: its objects were freed by reference counting,
        # none is kept alive by a reference cycle
        left = [o for o in gc.get_objects() if type(o) is AttemptState]
        assert left == []
    finally:
        gc.enable()


async def test_the_terminal_commit_finds_its_runs_by_key_whatever_the_statistics_say(store):
    # Given statistics taken when no run was running, then 300 runs claimed
    ids = await _runs(store, 300)
    async with store.db.conn() as c:
        await c.execute("ANALYZE runs")
    claimed = await store.batches.claim_many([(r, False) for r in ids])

    # When the statement ending 20 of them is planned
    batch = [
        Finishing(r.run_id, r.attempt, Transition.SUCCEED, [encode_event(1, {"type": "done"})])
        for r in claimed[:20]
        if r is not None
    ]
    async with store.db.conn() as c:
        plan = "\n".join(
            row[0] for row in await c.fetch("EXPLAIN " + FINISH_MANY, *finish_many_args(batch))
        )

    # Then it reaches each run through the primary key, not by scanning every running run
    assert "runs_pkey" in plan
    assert "runs_active" not in plan


async def test_a_first_attempt_raises_its_fence_with_its_first_copy(settings, store, rio):
    # Given two runs claimed in one batch for their first attempt (no fence raised yet)
    ids = await _runs(store, 2)
    writes = RunWrites(store, rio, "w1")
    try:
        claimed = await asyncio.gather(
            *(writes.claim(r, reclaim=False, entry_id=f"1-{n}") for n, r in enumerate(ids))
        )
    finally:
        await writes.close()
    for c in claimed:
        assert c.run is not None
        assert c.run.attempt == 1
        assert isinstance(c.fence, Fence)
        assert c.fence.deferred
    assert (await rio.diagnostics(ids[0]))["fence_attempt"] is None
    # And the second run is taken over by attempt 2 before attempt 1 wrote anything
    await store.runs.claim(ids[1], reclaim=True)
    await rio.fence(ids[1], 2, "w2", "2-0")

    # When attempt 1 copies its first events to both, raising its fence as it goes
    first = [encode_event(1, {"type": "start", "agent": "ticker"})]
    ok = await rio.append(ids[0], 1, first, fence=("w1", "1-0"))
    with pytest.raises(LeaseLost):
        await rio.append(ids[1], 1, first, fence=("w1", "1-1"))

    # Then the first run's fence is up for attempt 1, as a separate fence would have left it
    assert not ok.cancel_requested
    diag = await rio.diagnostics(ids[0])
    assert (diag["fence_attempt"], diag["owner"], diag["entry_id"]) == (1, "w1", "1-0")
    assert diag["redis_seq"] == 1
    # And the run attempt 2 owns got nothing from attempt 1
    assert await rio.events_after(ids[1], 0) == []
    assert (await rio.diagnostics(ids[1]))["owner"] == "w2"
    # And the same copy sent again adds nothing
    await rio.append(ids[0], 1, first, fence=("w1", "1-0"))
    assert [e.seq for e in await rio.events_after(ids[0], 0)] == [1]


async def test_an_entry_the_worker_re_claims_from_itself_keeps_the_newer_attempts_slot(
    settings, store, worker
):
    """A worker whose lease ran out while it stalled (a frozen Redis primary, in the Sentinel
    split-brain test) re-claims its own entry; the superseded attempt, ending, took the newer
    one's slot with it, so the newer one's end was never recorded and never healed."""
    rio = worker.rio
    assert rio is not None
    # Given a ticker run under way on the worker
    new = NewRun("u", "ticker", "x", {"count": 20, "interval_ms": 50}, {})
    run_id = (await store.submits.insert_run(new, max_in_flight=1_000_000)).run_id
    await rio.enqueue(QueuedRun(run_id, "u"))

    async def running() -> bool:
        return any(s.attempt.run is not None for s in worker.slots.values())

    await wait_for(running, timeout=10, interval=0.01)
    (first,) = worker.slots.values()

    # When the worker launches a second attempt on the same entry, as its re-claim does
    worker._launch(first.attempt.entry, time.monotonic(), reclaimed=True)

    # Then the first attempt stops, the second finishes the run, the worker records its end
    # (what a failover's heal covers) and holds no slot after
    async def done() -> bool:
        run = await store.runs.get_run(run_id)
        return (
            run is not None
            and run.status is RunStatus.SUCCEEDED
            and first.task.done()
            and not worker.slots
            and not worker.acking
        )

    await wait_for(done, timeout=20, interval=0.02)
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.attempt == 2
    assert [r for r, _ in worker.liveness.recent_ends.since(60)] == [run_id]
