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
from typing import Any

from shared.config import Settings
from shared.deadletters import dead_letters, listing, retry, select
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.ops import OpsIO
from shared.redis.runs import RedisIO
from shared.store import Store


async def main(settings: Settings, args: Any) -> int:
    keys = Keys.from_settings(settings)
    r = create_redis(settings.with_(redis_max_connections=2), "longrun-dlq")
    rio, ops = RedisIO(r, keys, settings), OpsIO(r, keys)
    store = await Store.open(settings.with_(pg_pool_min=0, pg_pool_max=2), "longrun-dlq")
    try:
        cmd = args.dlq_command
        if cmd == "list":
            rows = await listing(store, ops)
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
        letters = await dead_letters(ops)
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
