"""arq peer (run with bench/.envs/arq): enqueue N no-op jobs, then drain them with one worker.

Tuned as BASELINES.md names it: max_jobs 100, poll_delay 0.01 s, keep_result 0 (and, with
--defaults, arq's own defaults). The worker times itself from the first job's start to the last
job's end. Prints one JSON object. Keys live under a unique queue name and are deleted after.

usage: python arq_drain.py N QUEUE [--defaults]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

N = int(sys.argv[1])
QUEUE = sys.argv[2]
DEFAULTS = "--defaults" in sys.argv
state = {"first": 0.0, "last": 0.0, "done": 0}


async def noop(ctx: dict) -> None:
    if not state["first"]:
        state["first"] = time.perf_counter()
    state["done"] += 1
    state["last"] = time.perf_counter()


async def main() -> None:
    settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    pool = await create_pool(settings, default_queue_name=QUEUE)
    try:
        t0 = time.perf_counter()
        for _ in range(N):
            await pool.enqueue_job("noop", _queue_name=QUEUE)
        enqueue_s = time.perf_counter() - t0
        tuned = {} if DEFAULTS else {"max_jobs": 100, "poll_delay": 0.01, "keep_result": 0}
        worker = Worker(
            functions=[noop],
            redis_settings=settings,
            queue_name=QUEUE,
            burst=True,
            handle_signals=False,
            **tuned,
        )
        w0 = time.perf_counter()
        await worker.async_run()
        wall_s = time.perf_counter() - w0
        await worker.close()
        drain_s = state["last"] - state["first"]
        print(
            json.dumps(
                {
                    "system": "arq" + (" defaults" if DEFAULTS else " tuned"),
                    "n": N,
                    "done": state["done"],
                    "enqueue_per_s": N / enqueue_s,
                    "drain_s": drain_s,
                    "drain_per_s": state["done"] / drain_s if drain_s else None,
                    "wall_per_s": state["done"] / wall_s,
                    "config": tuned or "defaults",
                }
            )
        )
    finally:
        keys = [k async for k in pool.scan_iter(match=f"{QUEUE}*")]
        if keys:
            await pool.delete(*keys)
        await pool.aclose()


asyncio.run(main())
