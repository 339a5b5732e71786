"""The promoter: every worker, every `LONGRUN_DELAY_POLL_SECONDS`, takes the delayed runs that
are due from Redis' delayed set and enqueues them. Taking is one script (`take_due`), so each
due run is taken by exactly one worker however many look at once; that worker adds its queue
entry. A run starts within about one poll of its time (plus the wait for a free slot).

A worker that dies between the take and the enqueue loses nothing Postgres does not know: the
run is still queued there with its `start_at`, and the reconciler enqueues a due run found
neither in the set nor in the queue. One that cannot enqueue (Redis failing between the two)
puts what it took back in the set, due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import structlog

from shared.models import QueuedRun
from shared.redis.client import REDIS_ERRORS
from shared.redis.delayed import Due
from shared.redis.runs import RedisIO

log = structlog.get_logger("longrun.worker.delayed")

# Due runs taken per script call; a full batch is followed by the next one at once.
PROMOTE_BATCH = 100


async def enqueue_run(rio: RedisIO, run: QueuedRun) -> None:
    """A promoted run's queue entry."""
    await rio.enqueue(run)


async def promote_due(rio: RedisIO, now_ms: int, limit: int = PROMOTE_BATCH) -> list[Due]:
    """Take the runs due by `now_ms` (a value: tests pass their own clock) and enqueue each;
    the runs this call promoted. Raises when Redis fails, after putting back what it took and
    could not enqueue (best effort)."""
    taken = await rio.delayed.take_due(now_ms, limit)
    for i, due in enumerate(taken):
        try:
            await enqueue_run(rio, due.run)
        except REDIS_ERRORS:
            back = [(d.run, datetime.fromtimestamp(d.due_ms / 1000, UTC)) for d in taken[i:]]
            with contextlib.suppress(*REDIS_ERRORS):
                await rio.delayed.schedule(back)
            raise
        log.info("run_promoted", run_id=due.run.run_id, late_ms=max(0, now_ms - due.due_ms))
    return taken


async def promote_forever(rio: RedisIO, poll_seconds: float, stopping: asyncio.Event) -> None:
    """Until `stopping`: promote what is due, then wait a poll (no wait after a full batch)."""
    while not stopping.is_set():
        taken = await promote_due(rio, int(time.time() * 1000))
        if len(taken) >= PROMOTE_BATCH:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), poll_seconds)
