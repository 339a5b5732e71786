"""The reconciler: Postgres is the truth, so a run it has as queued or running must have a
queue entry. Redis can lose entries (restarted empty, flushed, failed over); one worker at a
time (a lock, released after each pass) finds active runs with no entry and re-enqueues them:
queued runs older than a moment (a submit adds its entry within milliseconds of its row), and
running runs whose Postgres heartbeat stopped two leases ago (their worker is gone; a live
worker hands a run whose entry vanished over itself), re-queued fenced on their attempt. A
duplicate entry is harmless: a worker starts a run only through a conditional transition in
Postgres.

It also removes dead consumers from the group, only once they hold nothing pending (Lua:
checked and deleted atomically, since XGROUP DELCONSUMER drops a consumer's pending entries).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from shared.config import Settings
from shared.models import RunStatus
from shared.redisio import RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.reconciler")

# A queued run with no entry is lost once it is older than this: a submit adds the entry, and
# a hand-over its fresh one, within milliseconds of the row.
QUEUED_GRACE = 2.0

_DEL_IDLE_CONSUMERS = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] end
    if c[i] == 'pending' then pending = c[i + 1] end
    if c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
"""


async def queued_run_ids(rio: RedisIO, batch: int = 1000) -> set[str]:
    """Run ids of every entry in the queue stream (pending ones included)."""
    found: set[str] = set()
    start = "-"
    while True:
        entries = await rio.r.xrange(rio.keys.queue, min=start, max="+", count=batch)
        for _entry_id, fields in entries:
            run = fields.get(b"run")
            if run:
                found.add(run.decode())
        if len(entries) < batch:
            return found
        last = entries[-1][0].decode()
        start = "(" + last


async def forget_dead_workers(rio: RedisIO, older_than_seconds: float) -> int:
    """Drop workers whose last heartbeat is older than this from the live-workers set."""
    cutoff = time.time() - older_than_seconds
    dead = await rio.r.zrangebyscore(rio.keys.workers, "-inf", cutoff)
    for name in dead:
        await rio.r.zrem(rio.keys.workers, name)
        await rio.r.delete(rio.keys.worker_info(name.decode()))
    return len(dead)


async def reconcile_once(
    settings: Settings, store: Store, rio: RedisIO, owner: str, *, urgent: bool = False
) -> int:
    """One pass under the lock; returns how many runs were re-enqueued. `urgent`: Redis may
    just have lost data (a worker saw it restart): a second pass follows once the runs
    submitted just before the loss are past the grace."""
    fixed = await _pass(settings, store, rio, owner)
    if urgent:
        await asyncio.sleep(QUEUED_GRACE + 0.5)
        fixed += await _pass(settings, store, rio, owner)
    return fixed


async def _pass(settings: Settings, store: Store, rio: RedisIO, owner: str) -> int:
    lock_ms = int(max(settings.reconcile_seconds * 3, 1.0) * 1000)
    if not await rio.take_lock(rio.keys.reconcile_lock, owner, lock_ms):
        return 0
    try:
        return await _reenqueue_lost(settings, store, rio)
    finally:
        await rio.release_lock(rio.keys.reconcile_lock, owner)


async def _reenqueue_lost(settings: Settings, store: Store, rio: RedisIO) -> int:
    candidates = await store.runs.active_runs(
        queued_for=QUEUED_GRACE, running_silent_for=settings.lease_seconds * 2
    )
    fixed = 0
    if candidates:
        present = await queued_run_ids(rio)
        for run in candidates:
            if run.run_id in present:
                continue
            requeued = run.status is not RunStatus.RUNNING or await store.runs.requeue(
                run.run_id, run.attempt, []
            )
            if not requeued:
                continue
            await rio.enqueue(run.run_id)
            fixed += 1
            log.warning("run_reenqueued", run_id=run.run_id, was=str(run.status))
    await forget_dead_workers(rio, settings.lease_seconds * 10)
    try:
        await rio.r.eval(
            _DEL_IDLE_CONSUMERS,
            1,
            rio.keys.queue,
            rio.keys.group,
            int(settings.lease_seconds * 10 * 1000),
        )
    except Exception as exc:  # an old Redis without XINFO in scripts: not worth a crash
        log.info("consumer_cleanup_skipped", error=str(exc)[:200])
    return fixed
