"""The ticker: a loop of every worker that makes the runs of due schedules.

Every `schedule_tick_seconds` it asks Postgres for the schedules due now
(`store.schedules.tick`: one transaction takes them `FOR UPDATE SKIP LOCKED`, records each
(schedule, tick) under its unique key, inserts the runs queued and moves each schedule on), then
adds the runs' queue entries after the commit, in one round trip. Any number of workers tick at
once: a schedule one of them holds is skipped by the others, and a tick recorded already makes
no second run, so each tick makes exactly one run across workers and restarts. An entry Redis
refuses is not retried here: the run is queued in Postgres, and the reconciler's pass over
queued runs with no entry adds it (`worker.reconcile`).

While the kill switch is on (`longrun pause`) no schedule ticks: the pause is an outage for
schedules, and after `longrun resume` the missed-ticks policy applies (one run for the most
recent tick). Redis not answering is not a pause: the runs are made, and the reconciler adds
their entries.

`now` is a value (`clock`): the tests drive the ticker with a fake one. Which tick a due
schedule makes, and the missed-ticks policy, are `shared.cron.due_tick`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from shared.config import Settings
from shared.models import QueuedRun
from shared.redis.client import REDIS_ERRORS
from shared.redis.runs import RedisIO
from shared.store import Store
from shared.store.schedules import Made

log = structlog.get_logger("longrun.schedules")

# Schedules taken per transaction; a full batch is followed by the next one at once.
BATCH = 100


def wall_clock() -> datetime:
    return datetime.now(UTC)


class Ticker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        rio: RedisIO,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self.period = settings.schedule_tick_seconds
        self.store = store
        self.rio = rio
        self.clock = clock

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until `stopping` (errors propagate: the worker's loop runner backs off)."""
        while not stopping.is_set():
            made = await self.once()
            if len(made) == BATCH:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.period)

    async def once(self, now: datetime | None = None) -> list[Made]:
        """One pass at `now` (default: the clock): the runs made, their entries added (or left
        to the reconciler). Nothing while the kill switch is on."""
        if await self._paused():
            return []
        made = await self.store.schedules.tick(self.clock() if now is None else now, BATCH)
        if not made:
            return made
        added = await self.rio.enqueue_many([QueuedRun(m.run_id, m.user_id) for m in made])
        for m, entry in zip(made, added, strict=True):
            refused = isinstance(entry, BaseException)
            log.info(
                "schedule_ticked",
                schedule_id=m.schedule_id,
                run_id=m.run_id,
                tick_at=m.tick_at.isoformat(),
                enqueued=not refused,
            )
        return made

    async def _paused(self) -> bool:
        try:
            return await self.rio.group.paused()
        except REDIS_ERRORS:
            return False  # Redis down is no pause: the reconciler enqueues what is made
