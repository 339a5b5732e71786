"""`longrun status`: backlog, pending, in flight, live workers, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from shared.config import Settings
from shared.keys import Keys
from shared.redisio import create_redis


async def gather(settings: Settings) -> dict[str, Any]:
    keys = Keys.from_settings(settings)
    r = create_redis(settings, "longrun-status")
    try:
        backlog = await r.xlen(keys.queue)
        pending = 0
        lag = None
        try:
            groups = await r.xinfo_groups(keys.queue)
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if name == keys.group:
                    pending = int(g["pending"])
                    lag = g.get("lag")
        except Exception:  # no stream or group yet
            groups = []
        now = time.time()
        workers = []
        for name, beat in await r.zrange(keys.workers, 0, -1, withscores=True):
            wname = name.decode()
            info = await r.hgetall(keys.worker_info(wname))
            alive = now - beat < settings.lease_seconds
            workers.append(
                {
                    "name": wname,
                    "alive": alive,
                    "last_heartbeat_age_s": round(now - beat, 3),
                    "in_flight": int(info.get(b"in_flight", 0)),
                    "concurrency": int(info.get(b"concurrency", 0)),
                }
            )
        dead = await r.xlen(keys.dead_letters)
    finally:
        await r.aclose()
    return {
        "queue": keys.queue,
        "backlog": backlog,
        "pending": pending,
        "lag": None if lag is None else int(lag),
        "queued_not_started": backlog - pending,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "workers": workers,
        "dead_letters": dead,
    }


def problems(s: dict[str, Any]) -> list[str]:
    out = []
    if s["backlog"] > 0 and s["workers_alive"] == 0:
        out.append("runs are queued but no worker is alive")
    if s["dead_letters"] > 0:
        out.append(f"{s['dead_letters']} dead letters")
    return out


def run(settings: Settings, *, as_json: bool) -> int:
    s = asyncio.run(gather(settings))
    issues = problems(s)
    if as_json:
        print(json.dumps({**s, "problems": issues}, indent=2))
    else:
        print(
            f"queue {s['queue']}: backlog {s['backlog']} (pending {s['pending']}, "
            f"not started {s['queued_not_started']}, lag {s['lag']})"
        )
        print(f"workers alive: {s['workers_alive']}")
        for w in s["workers"]:
            print(
                f"  {w['name']}: {'alive' if w['alive'] else 'DEAD'}, in flight "
                f"{w['in_flight']}/{w['concurrency']}, heartbeat {w['last_heartbeat_age_s']}s ago"
            )
        print(f"dead letters: {s['dead_letters']}")
        for i in issues:
            print(f"PROBLEM: {i}")
    return 1 if issues else 0
