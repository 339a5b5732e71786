"""Dead letters as operators handle them, from the CLI (`longrun dlq`) or the API (`/ops/dlq`):
list them with their runs' statuses, re-run one, drop some. One implementation for both, so a
retry from the console is the same sequence of writes as one from a terminal."""

from __future__ import annotations

import time
from typing import Any

from shared.metrics import DeadLetter, parse_dead_letter
from shared.redis.ops import OpsIO
from shared.redis.runs import RedisIO
from shared.store import Store

LIST_CAP = 10_000


async def dead_letters(ops: OpsIO) -> list[DeadLetter]:
    return [
        parse_dead_letter(eid, fields) for eid, fields in await ops.dead_letters(limit=LIST_CAP)
    ]


def select(letters: list[DeadLetter], ids: list[str], everything: bool) -> list[DeadLetter]:
    """The letters named by entry id or run id (all of them for `everything`)."""
    if everything:
        return letters
    wanted = set(ids)
    return [d for d in letters if d.entry_id in wanted or d.run_id in wanted]


async def retry(store: Store, rio: RedisIO, ops: OpsIO, letter: DeadLetter) -> str:
    """Re-run one dead-lettered run; returns what happened, for the operator."""
    if not await store.ops.retry_failed(letter.run_id):
        return "skipped (the run is not failed)"
    # Redis still holds the failed attempt's fence and events (with the withdrawn error):
    # drop them; the next attempt seeds its seq from the archive and the archive serves them.
    await rio.forget_run(letter.run_id)
    for item in await store.runs.queue_items([letter.run_id]):
        await rio.enqueue(item)
    await ops.drop_dead_letters([letter.entry_id])
    return "requeued"


async def listing(store: Store, ops: OpsIO) -> list[dict[str, Any]]:
    """Every dead letter, oldest first, with its run's current status."""
    letters = await dead_letters(ops)
    statuses = await store.ops.run_statuses([d.run_id for d in letters])
    now = time.time()
    return [
        {
            "entry_id": d.entry_id,
            "run_id": d.run_id,
            "deliveries": d.deliveries,
            "reason": d.reason,
            "age_seconds": round(max(0.0, now - d.at), 1),
            "run_status": statuses.get(d.run_id),
        }
        for d in letters
    ]
