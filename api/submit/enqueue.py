"""The last step of every submit, grouped or alone: the queue entries of runs just committed
(or, for a delayed run, its place in the delayed set: `shared.redis.delayed`). A run whose entry
Redis refused has its row taken back out and its submit answers 503, so nothing is left
half-way: a run is queued in Postgres only with its entry in Redis (or, when the take-back
itself fails, until the reconciler adds the entry)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog

from api.errors import redis_failure
from shared.errors import Unavailable
from shared.models import QueuedRun
from shared.redis.client import REDIS_ERRORS
from shared.redis.runs import RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.api.submit")

DOWN = "redis is unavailable: the run was not accepted"

# A committed run to enqueue, and when it may start (None: at once).
Planned = tuple[QueuedRun, datetime | None]


async def enqueue(store: Store, rio: RedisIO, runs: Sequence[Planned]) -> list[Unavailable | None]:
    """One round trip for the runs to start now, one for the delayed ones (when there are
    any): None where its entry was added, else the 503 its submit answers (its row deleted
    again)."""
    now = [i for i, (_, at) in enumerate(runs) if at is None]
    later = [i for i, (_, at) in enumerate(runs) if at is not None]
    added: list[str | BaseException] = [""] * len(runs)
    if now:
        for i, x in zip(now, await rio.enqueue_many([runs[i][0] for i in now]), strict=True):
            added[i] = x
    if later:
        outcome = await _schedule(rio, [(q, at) for q, at in runs if at is not None])
        for i in later:
            added[i] = outcome
    errors = [x for x in added if isinstance(x, BaseException)]
    if not errors:
        return [None] * len(added)
    failed = [
        q.run_id for (q, _), x in zip(runs, added, strict=True) if isinstance(x, BaseException)
    ]
    try:
        await store.submits.delete_queued_runs(failed)
    except Unavailable:
        # The rows stay queued without entries: the reconciler enqueues them later.
        log.warning("submit_undo_failed", runs=len(failed))
    down = redis_failure(errors[0], DOWN)
    return [down if isinstance(x, BaseException) else None for x in added]


async def _schedule(rio: RedisIO, runs: list[tuple[QueuedRun, datetime]]) -> str | BaseException:
    """The delayed runs' places in the set, all or none (one script call)."""
    try:
        await rio.delayed.schedule(runs)
    except REDIS_ERRORS as exc:
        return exc
    return "delayed"
