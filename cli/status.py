"""`longrun status`: the backlog, lag, pending, oldest waiting run, workers with their in-flight
counts and last heartbeat, dead letters; `--json` for scripts.

Exit codes: 0 healthy; 1 something is wrong (the `problems` list: runs queued with no live
worker, dead letters newer than the acknowledged watermark, a run waiting while workers idle);
2 Redis cannot be reached. "Dead letters growing" means: dead letters arrived since an operator
last ran `longrun dlq ack`; acknowledging sets the watermark to the newest one, so the status
goes back to 0 until the next one arrives.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from shared.config import Settings
from shared.metrics import RedisFigures, cluster_redis, problems
from shared.redis.client import REDIS_DOWN, create_redis
from shared.redis.keys import Keys
from shared.redis.ops import OpsIO

TIMEOUT = 5.0
UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_DOWN, TimeoutError)


async def gather(settings: Settings) -> RedisFigures:
    r = create_redis(settings.with_(redis_max_connections=2), "longrun-status")
    ops = OpsIO(r, Keys.from_settings(settings))
    try:
        return await asyncio.wait_for(cluster_redis(ops, settings), TIMEOUT)
    finally:
        await ops.aclose()


def as_dict(f: RedisFigures, settings: Settings) -> dict[str, Any]:
    return {
        "queue": settings.queue,
        "group": settings.group,
        "backlog": f.backlog,
        "pending": f.group.pending,
        "lag": f.group.lag,
        "waiting": f.waiting,
        "oldest_waiting_age_seconds": f.oldest_waiting_age_seconds,
        "in_flight": f.in_flight,
        "free_slots": f.free_slots,
        "workers_alive": f.workers_alive,
        "workers": [
            {
                "name": w.name,
                "alive": w.alive,
                "in_flight": w.in_flight,
                "concurrency": w.concurrency,
                "last_heartbeat_age_seconds": w.heartbeat_age_seconds,
                "host": w.host,
                "pid": w.pid,
            }
            for w in f.workers
        ],
        "dead_letters": f.dead_letters,
        "dead_letters_unacknowledged": f.dead_letters_unacked,
        "newest_dead_letter_age_seconds": f.newest_dead_letter_age_seconds,
        "counters": f.counters,
        "breakers": f.breakers,
        "problems": problems(f, settings),
    }


def render(s: dict[str, Any]) -> str:
    lag = "n/a" if s["lag"] is None else s["lag"]
    oldest = s["oldest_waiting_age_seconds"]
    lines = [
        f"queue {s['queue']} (group {s['group']}): backlog {s['backlog']}, "
        f"waiting {s['waiting']} (lag {lag}), pending {s['pending']}",
        f"oldest waiting run: {'-' if oldest is None else f'{oldest:.1f} s'}",
        f"workers alive: {s['workers_alive']}, in flight {s['in_flight']}, "
        f"free slots {s['free_slots']}",
    ]
    for w in s["workers"]:
        state = "alive" if w["alive"] else "DEAD "
        lines.append(
            f"  {state} {w['name']}: in flight {w['in_flight']}/{w['concurrency']}, "
            f"heartbeat {w['last_heartbeat_age_seconds']:.1f} s ago"
        )
    lines.append(f"dead letters: {s['dead_letters']} ({s['dead_letters_unacknowledged']} new)")
    counters = ", ".join(f"{k} {v}" for k, v in sorted(s["counters"].items()))
    lines.append(f"counters: {counters}")
    for model, st in sorted(s["breakers"].items()):
        lines.append(f"breaker {model}: {st}")
    lines.extend(f"PROBLEM: {p}" for p in s["problems"])
    if not s["problems"]:
        lines.append("OK")
    return "\n".join(lines)


def run(settings: Settings, *, as_json: bool) -> int:
    try:
        figures = asyncio.run(gather(settings))
    except UNREACHABLE as exc:
        print(f"longrun: Redis is unreachable ({type(exc).__name__})", file=sys.stderr)
        return 2
    s = as_dict(figures, settings)
    print(json.dumps(s, indent=2) if as_json else render(s))
    return 1 if s["problems"] else 0
