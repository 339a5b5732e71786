"""The last step of every submit, grouped or alone: the queue entries of runs just committed.
A run whose entry Redis refused has its row taken back out and its submit answers 503, so
nothing is left half-way: a run is queued in Postgres only with its entry in Redis (or, when
the take-back itself fails, until the reconciler adds the entry)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from api.errors import redis_failure
from shared.errors import Unavailable
from shared.models import QueuedRun
from shared.redis.runs import RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.api.submit")

DOWN = "redis is unavailable: the run was not accepted"


async def enqueue(
    store: Store, rio: RedisIO, runs: Sequence[QueuedRun]
) -> list[Unavailable | None]:
    """One round trip for every run: None where its entry was added, else the 503 its submit
    answers (its row deleted again)."""
    added = await rio.enqueue_many(runs)
    errors = [x for x in added if isinstance(x, BaseException)]
    if not errors:
        return [None] * len(added)
    failed = [r.run_id for r, x in zip(runs, added, strict=True) if isinstance(x, BaseException)]
    try:
        await store.submits.delete_queued_runs(failed)
    except Unavailable:
        # The rows stay queued without entries: the reconciler enqueues them later.
        log.warning("submit_undo_failed", runs=len(failed))
    down = redis_failure(errors[0], DOWN)
    return [down if isinstance(x, BaseException) else None for x in added]
