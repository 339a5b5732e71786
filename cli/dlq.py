"""`longrun dlq list|retry|drop|ack`: the dead letters (runs delivered more than
`LONGRUN_MAX_ATTEMPTS` times, failed with `max_attempts`, recorded in the dead-letter stream).

- `list` shows each dead letter with its run's current status;
- `retry ID...|--all` puts the run back in the queue: in Postgres failed -> queued
  (`Transition.RETRY`; its terminal `error` event is withdrawn from the archive so the run
  still ends with exactly one terminal event, its time limit starts again), then Redis forgets
  the run's old fence and events (the archive serves them), a new queue entry is added, and
  the dead letter is deleted. A run that is no longer failed is left alone;
- `drop ID...|--all` deletes dead letters (the runs stay failed);
- `ack` marks every current dead letter as seen: `longrun status` reports only newer ones.

IDs are dead-letter entry ids or run ids.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from shared.config import Settings
from shared.metrics import DeadLetter, parse_dead_letter
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.ops import OpsIO
from shared.redis.runs import RedisIO
from shared.store import Store

LIST_CAP = 10_000


async def dead_letters(ops: OpsIO) -> list[DeadLetter]:
    return [
        parse_dead_letter(eid, fields) for eid, fields in await ops.dead_letters(limit=LIST_CAP)
    ]


def select(letters: list[DeadLetter], ids: list[str], everything: bool) -> list[DeadLetter]:
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
    await rio.enqueue(letter.run_id)
    await ops.drop_dead_letters([letter.entry_id])
    return "requeued"


def _row(d: DeadLetter, status: str | None, now: float) -> dict[str, Any]:
    return {
        "entry_id": d.entry_id,
        "run_id": d.run_id,
        "deliveries": d.deliveries,
        "reason": d.reason,
        "age_seconds": round(max(0.0, now - d.at), 1),
        "run_status": status,
    }


async def main(settings: Settings, args: Any) -> int:
    keys = Keys.from_settings(settings)
    r = create_redis(settings.with_(redis_max_connections=2), "longrun-dlq")
    rio, ops = RedisIO(r, keys, settings), OpsIO(r, keys)
    store = await Store.open(settings.with_(pg_pool_min=0, pg_pool_max=2), "longrun-dlq")
    try:
        letters = await dead_letters(ops)
        cmd = args.dlq_command
        if cmd == "list":
            statuses = await store.ops.run_statuses([d.run_id for d in letters])
            now = time.time()
            rows = [_row(d, statuses.get(d.run_id), now) for d in letters]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for x in rows:
                    print(
                        f"{x['entry_id']}\trun {x['run_id']}\t{x['run_status']}\t"
                        f"{x['reason']} after {x['deliveries']} deliveries\t"
                        f"{x['age_seconds']:.0f} s ago"
                    )
                print(f"{len(rows)} dead letters")
            return 0
        if cmd == "ack":
            newest = letters[-1].entry_id if letters else "0-0"
            await ops.set_dlq_watermark(newest)
            print(f"acknowledged dead letters up to {newest}")
            return 0
        chosen = select(letters, args.ids, args.all)
        if not chosen:
            print("no matching dead letters")
            return 1
        if cmd == "drop":
            await ops.drop_dead_letters([d.entry_id for d in chosen])
            for d in chosen:
                print(f"{d.entry_id}\trun {d.run_id}\tdropped")
            return 0
        for d in chosen:
            print(f"{d.entry_id}\trun {d.run_id}\t{await retry(store, rio, ops, d)}")
        return 0
    finally:
        await store.close()
        await ops.aclose()


def run(settings: Settings, args: Any) -> int:
    return asyncio.run(main(settings, args))
