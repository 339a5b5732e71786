"""The reconciler: Postgres is the truth, so a run it has as queued or running must have a
queue entry. Redis can lose entries (restarted empty, flushed, failed over); one worker at a
time (a lock with a TTL) finds active runs with no entry and re-enqueues them. A duplicate entry
is harmless: a worker starts a run only through a conditional transition in Postgres.

It also removes dead consumers from the group, only once they hold nothing pending (Lua:
checked and deleted atomically, since XGROUP DELCONSUMER drops a consumer's pending entries).
"""

from __future__ import annotations

import time

import structlog

from shared.config import Settings
from shared.models import RunStatus
from shared.redisio import RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.reconciler")

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


async def reconcile_once(settings: Settings, store: Store, rio: RedisIO, owner: str) -> int:
    """One pass under the lock; returns how many runs were re-enqueued."""
    lock_ms = int(max(settings.reconcile_seconds * 3, 1.0) * 1000)
    if not await rio.r.set(rio.keys.reconcile_lock, owner, nx=True, px=lock_ms):
        return 0
    # Only runs untouched for over two leases: live runs are touched on every heartbeat,
    # and a run just submitted has its entry added within milliseconds.
    candidates = await store.runs.active_runs(older_than_seconds=settings.lease_seconds * 2)
    fixed = 0
    if candidates:
        present = await queued_run_ids(rio)
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
