"""The retention job: a loop of every worker, doing its pass every `retention_seconds` when no
other worker is (a Postgres advisory lock, `shared/store/retention.py`). A pass keeps the event
archive's partitions ready `event_partitions_ahead` periods ahead, finds the partitions whose
every run is past retention, deletes expired runs in batches of `retention_batch` runs (each
its own short transaction; the runs of those partitions without their events), at most
`MAX_BATCHES` per pass so a backlog is worked off over several passes without holding the lock
for long, then drops those partitions once no run row points into them: a run's row never
outlives its events.

`now` is a value (`retention_pass(settings, store, now)`): the tests run passes at chosen times.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from shared.config import Settings
from shared.store import Store

log = structlog.get_logger("longrun.retention")

MAX_BATCHES = 100


@dataclass
class Pass:
    """What one pass did (None from `retention_pass`: another worker held the lock)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: int = 0
    batches: int = 0


async def retention_pass(settings: Settings, store: Store, now: datetime) -> Pass | None:
    repo = store.retention
    period = settings.event_partition_days
    async with repo.lock() as c:
        if c is None:
            return None
        done = Pass()
        until = now + timedelta(days=period * settings.event_partitions_ahead)
        done.created = await repo.ensure_partitions(c, now, until, period)
        dropping = await repo.droppable(c, now, settings.retention_days)
        while done.batches < MAX_BATCHES:
            n = await repo.delete_batch(
                c, now, settings.retention_days, period, settings.retention_batch, dropping
            )
            done.batches += 1
            done.deleted += n
            if n < settings.retention_batch:
                break
        done.dropped = await repo.drop_emptied(c, dropping)
        return done


async def retention_loop(settings: Settings, store: Store, stopping: asyncio.Event) -> None:
    """Passes until `stopping`; the first at once (partitions exist before events need them)."""
    while not stopping.is_set():
        done = await retention_pass(settings, store, datetime.now(UTC))
        if done is not None and (done.created or done.dropped or done.deleted):
            log.info(
                "retention_pass",
                created=done.created,
                dropped=done.dropped,
                deleted=done.deleted,
                batches=done.batches,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.retention_seconds)
