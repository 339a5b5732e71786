"""The reconciler: Postgres is the truth, so a run it has as queued or running must have a
queue entry. Redis can lose entries (restarted empty, flushed, failed over); one worker at a
time (a lock with a TTL) finds active runs with no entry and re-enqueues them. A duplicate entry
is harmless: a worker starts a run only through a conditional transition in Postgres.

It also removes dead consumers from the group, only once they hold nothing pending (Lua:
checked and deleted atomically, since XGROUP DELCONSUMER drops a consumer's pending entries).
"""

from __future__ import annotations

import structlog

from shared.config import Settings
from shared.models import RunStatus
from shared.redis.runs import RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.reconciler")


async def reconcile_once(settings: Settings, store: Store, rio: RedisIO, owner: str) -> int:
    """One pass under the lock; returns how many runs were re-enqueued."""
    group = rio.group
    lock_ms = int(max(settings.reconcile_seconds * 3, 1.0) * 1000)
    if not await group.take_reconcile_lock(owner, lock_ms):
        return 0
    # Only runs untouched for over two leases: live runs are touched on every heartbeat,
    # and a run just submitted has its entry added within milliseconds.
    candidates = await store.runs.active_runs(older_than_seconds=settings.lease_seconds * 2)
    fixed = 0
    if candidates:
        present = await group.queued_run_ids()
        for run in candidates:
            if run.run_id in present:
                continue
            requeued = run.status is not RunStatus.RUNNING or await store.runs.requeue(
                run.run_id, None, []
            )
            if not requeued:
                continue
            await rio.enqueue(run.run_id)
            fixed += 1
            log.warning("run_reenqueued", run_id=run.run_id, was=str(run.status))
    await group.forget_dead_workers(settings.lease_seconds * 10)
    try:
        await group.drop_idle_consumers(int(settings.lease_seconds * 10 * 1000))
    except Exception as exc:  # an old Redis without XINFO in scripts: not worth a crash
        log.info("consumer_cleanup_skipped", error=str(exc)[:200])
    return fixed
