"""The reconciler: Postgres is the truth, so a run it has as queued or running must have a
queue entry. Redis can lose entries (restarted empty, flushed, failed over); one worker at a
time (a lock, released after each pass) finds active runs with no entry and re-enqueues them:
queued runs older than a moment (a submit adds the entry, and a hand-over its fresh one, within
milliseconds of the row), and running runs whose Postgres heartbeat stopped two leases ago
(their worker is gone: a live worker hands a run whose entry vanished over itself), re-queued
fenced on their attempt. A duplicate entry is harmless: a worker starts a run only through a
conditional transition in Postgres.

It also acts on the deadlines of waiting runs' interrupts (no worker holds a waiting run, so
someone else must notice): past its deadline an interrupt is answered with the default the
agent gave (the run queued again) or the run fails `interrupt_timeout` (its `error` event
archived and copied to Redis, the thread's next run queued).

Delayed runs (`start_at`) wait in Redis' delayed set, not the queue, until a worker promotes
them (`worker.delayed`). A queued run not due yet is never enqueued here: one missing from the
set (Redis restarted empty) is put back in it, with its time; one due for over the grace and
found neither in the set nor in the queue (its promoter died between taking and enqueuing it,
or Redis lost both) is enqueued. The set is walked only when it holds fewer runs than Postgres
has waiting, or when Redis may just have lost data.


It covers every queue shard (up to the largest shard count any process ran with), looking for
a run's entry in each shard's ready and held streams, and checks each shard's tenant lines
against its held stream (rebuilt from the stream if they disagree, so no held entry is left
out of the round-robin). It also removes dead consumers from each shard's group, only once
they hold nothing pending (Lua: checked and deleted atomically, since XGROUP DELCONSUMER drops
a consumer's pending entries).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from shared.config import Settings
from shared.models import QueuedRun, RunStatus
from shared.redis.client import REDIS_ERRORS
from shared.redis.keys import SHARED_TENANT
from shared.redis.runs import RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.reconciler")

# A queued run with no entry is lost once it is older than this.
QUEUED_GRACE = 2.0
# Deadlines acted on per pass (the oldest first; the next pass takes the rest).
DUE_MAX = 500
# Delayed runs read from Postgres per statement, when the delayed set is walked.
SCHEDULED_PAGE = 1000


async def reconcile_once(
    settings: Settings, store: Store, rio: RedisIO, owner: str, *, urgent: bool = False
) -> int:
    """One pass under the lock; returns how many runs were re-enqueued. `urgent`: Redis may
    just have lost data (a worker saw it restart): a second pass follows once the runs
    submitted just before the loss are past the grace."""
    fixed = await _pass(settings, store, rio, owner, urgent)
    if urgent:
        await asyncio.sleep(QUEUED_GRACE + 0.5)
        fixed += await _pass(settings, store, rio, owner, urgent)
    return fixed


async def _pass(settings: Settings, store: Store, rio: RedisIO, owner: str, urgent: bool) -> int:
    group = rio.group
    lock_ms = int(max(settings.reconcile_seconds * 3, 1.0) * 1000)
    if not await group.take_reconcile_lock(owner, lock_ms):
        return 0
    try:
        await _expire_interrupts(store, rio)
        await _reschedule_lost(store, rio, walk=urgent)
        return await _reenqueue_lost(settings, store, rio)
    finally:
        await group.release_reconcile_lock(owner)


async def _expire_interrupts(store: Store, rio: RedisIO) -> None:
    for run_id, interrupt_id in await store.interrupts.due(DUE_MAX):
        done = await store.interrupts.expire(run_id, interrupt_id)
        if done is None:
            continue  # answered or cancelled meanwhile
        log.info("interrupt_expired", run_id=run_id, resumed=done.resumed)
        if done.resumed:
            for item in await store.runs.queue_items([run_id]):
                await rio.enqueue(item)
            continue
        if done.ended is not None:
            with contextlib.suppress(*REDIS_ERRORS):  # best effort: the archive has it
                await rio.publish_terminal(run_id, done.ended)
        if done.next_run is not None:
            for item in await store.runs.queue_items([done.next_run]):
                await rio.enqueue(item)


async def _reschedule_lost(store: Store, rio: RedisIO, *, walk: bool) -> int:
    """Put the delayed runs not due for over the grace back in the set where Redis lost them
    (their time kept; one in the set keeps its own). `walk`: whatever the counts say."""
    if not walk and await rio.delayed.count() >= await store.runs.scheduled_count(QUEUED_GRACE):
        return 0
    added = 0
    after = None
    while True:
        page = await store.runs.scheduled(QUEUED_GRACE, after, SCHEDULED_PAGE)
        if not page:
            break
        added += await rio.delayed.schedule(page, only_new=True)
        if len(page) < SCHEDULED_PAGE:
            break
        last, at = page[-1]
        after = (at, last.run_id)
    if added:
        log.warning("delayed_runs_rescheduled", runs=added)
    return added


async def _reenqueue_lost(settings: Settings, store: Store, rio: RedisIO) -> int:
    group = rio.group
    candidates = await store.runs.active_runs(
        queued_for=QUEUED_GRACE, running_silent_for=settings.lease_seconds * 2
    )
    fixed = 0
    await group.refresh_shards()  # a shard count raised elsewhere: cover its shards too
    relisted = await group.rebuild_lines(SHARED_TENANT)
    if relisted:
        log.warning("queue_lines_rebuilt", entries=relisted)
    if candidates:
        # The delayed set first: a run a promoter takes meanwhile is in the queue by the time
        # the queue is read.
        delayed = await rio.delayed.present([r.run_id for r in candidates if r.start_at])
        present = await group.queued_run_ids() | delayed
        for run in candidates:
            if run.run_id in present:
                continue
            requeued = run.status is not RunStatus.RUNNING or await store.runs.requeue(
                run.run_id, run.attempt, []
            )
            if not requeued:
                continue
            await rio.enqueue(QueuedRun(run.run_id, run.user_id, run.priority))
            fixed += 1
            log.warning("run_reenqueued", run_id=run.run_id, was=str(run.status))
    await group.forget_dead_workers(settings.lease_seconds * 10)
    try:
        await group.drop_idle_consumers(int(settings.lease_seconds * 10 * 1000))
    except Exception as exc:  # an old Redis without XINFO in scripts: not worth a crash
        log.info("consumer_cleanup_skipped", error=str(exc)[:200])
    return fixed
