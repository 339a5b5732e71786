"""`longrun status`: the backlog, lag, pending, the scheduled (delayed) runs, oldest waiting
run, workers with their in-flight counts and last heartbeat, dead letters; `--json` for
scripts.

Exit codes: 0 healthy; 1 something is wrong (the `problems` list: runs queued with no live
worker, dead letters newer than the acknowledged watermark, a run waiting while workers idle);
2 Redis cannot be reached. "Dead letters growing" means: dead letters arrived since an operator
last ran `longrun dlq ack`; acknowledging sets the watermark to the newest one, so the status
goes back to 0 until the next one arrives.

`--watch` redraws the same view in place every `--interval` seconds (ANSI: cursor home, each
line cleared to its end, the rest of the screen cleared), shows an unreachable Redis as a line
of the view rather than ending, and ends with exit 0 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from cli.exits import Exit, redis_failure
from shared.config import Settings
from shared.metrics import RedisFigures, as_dict, cluster_redis
from shared.redis.client import REDIS_DOWN, create_redis
from shared.redis.keys import Keys
from shared.redis.ops import OpsIO

TIMEOUT = 5.0
UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_DOWN, TimeoutError)


async def _figures(ops: OpsIO, settings: Settings) -> RedisFigures:
    return await asyncio.wait_for(cluster_redis(ops, settings), TIMEOUT)


def _client(settings: Settings) -> OpsIO:
    r = create_redis(settings.with_(redis_max_connections=2), "longrun-status")
    return OpsIO(r, Keys.from_settings(settings))


async def gather(settings: Settings) -> RedisFigures:
    ops = _client(settings)
    try:
        return await _figures(ops, settings)
    finally:
        await ops.aclose()


def render(s: dict[str, Any]) -> str:
    lag = "n/a" if s["lag"] is None else s["lag"]
    oldest = s["oldest_waiting_age_seconds"]
    lines = [
        f"queue {s['queue']} (group {s['group']}): backlog {s['backlog']}, "
        f"waiting {s['waiting']} (lag {lag}), pending {s['pending']}; "
        f"scheduled {s['scheduled']} (delayed, not in the backlog)",
        *(
            f"  shard {x['shard']}: ready {x['ready']}, held {x['held']}, pending {x['pending']}"
            for x in s.get("shards", [])
            if len(s["shards"]) > 1
        ),
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
        raise redis_failure(settings, exc) from exc
    s = as_dict(figures, settings)
    print(json.dumps(s, indent=2) if as_json else render(s))
    return Exit.NOT_SUCCEEDED if s["problems"] else Exit.OK


# ---- --watch

HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"


def frame(text: str, header: str, first: bool) -> str:
    """One redraw: the previous frame is overwritten line by line, so nothing flickers."""
    lines = [header, "", *text.splitlines()]
    body = "".join(f"{line}{CLEAR_LINE}\n" for line in lines)
    return (CLEAR_SCREEN if first else "") + HOME + body + CLEAR_BELOW


async def _watch(settings: Settings, interval: float, as_json: bool) -> None:
    ops = _client(settings)
    first = True
    try:
        while True:
            try:
                s = as_dict(await _figures(ops, settings), settings)
                text = json.dumps(s, indent=2) if as_json else render(s)
            except UNREACHABLE as exc:
                text = "PROBLEM: " + redis_failure(settings, exc).message
            stamp = time.strftime("%H:%M:%S")
            header = f"longrun status, every {interval:g} s ({stamp}); Ctrl-C to stop"
            sys.stdout.write(frame(text, header, first))
            sys.stdout.flush()
            first = False
            await asyncio.sleep(interval)
    finally:
        await ops.aclose()


def watch(settings: Settings, *, interval: float, as_json: bool) -> int:
    """Until Ctrl-C, which is the normal way out: exit 0."""
    try:
        asyncio.run(_watch(settings, interval, as_json))
    except KeyboardInterrupt:
        print()
    return Exit.OK
