"""The SSE fan-out engine shared by the fan-out and memory benchmarks.

Producers, two kinds. `worker`: the `stamp` bench agent run by a real longrun worker (the worker's
fenced append), each token carrying the agent's clock when it yields the token, so the latency
also holds the worker's batching (a 2 ms linger) and whatever delays its appends (an inline
archive to Postgres every 2 s). `redis`: this process appends the runs' events itself, through the
append script as a worker's copy does (the same stream entries, and the notice that wakes the
API's hub), each token carrying the clock just before its append: the latency from the append to
the client, which is what the API serves;
the runs stay queued (no worker) and are cancelled afterwards. Consumers: `bench.sse_client`
subscribers in this process, all connected before the producer's `start_at`. Two designs serve
the same runs: longrun's API (`GET /runs/{id}/events`) and the naive sse-starlette app (one
`XREAD BLOCK` per subscriber) reading the same Redis event streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from bench.agents import parse_stamp
from bench.lib import (
    REDIS_URL,
    Proc,
    cpu_seconds,
    free_port,
    latency_ms,
    redis_client_entries,
    redis_port,
    rss_bytes,
    tcp_connections_to,
    uvicorn_argv,
    wait_http,
)
from bench.sse_client import subscribe
from bench.stack import Stack


def redis_pid() -> int:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    try:
        return int(r.info("server")["process_id"])
    finally:
        r.close()


def redis_clients(pid: int, window_s: float) -> tuple[dict[str, int], dict[str, int]]:
    """Redis connections held by process `pid`, by client name: all of them, and those in use
    during the last `window_s` seconds minus one (CLIENT LIST's `idle`, in whole seconds, is
    below that, or the connection is blocked in a read right now). The second count leaves out
    pooled connections opened by the burst of requests that connected the subscribers and idle
    since: the connections used to serve the streams while they were live."""
    held: dict[str, int] = {}
    live: dict[str, int] = {}
    for c in redis_client_entries(pid):
        name = str(c.get("name") or "-")
        held[name] = held.get(name, 0) + 1
        if int(c.get("idle", 0)) < window_s - 1 or "b" in str(c.get("flags", "")):
            live[name] = live.get(name, 0) + 1
    return held, live


def cpu_sample(st: Stack, server: Server) -> dict[str, float]:
    """CPU seconds so far of the serving process, the workers, this client and Redis."""
    return {
        "server": cpu_seconds(server.proc.pid),
        "workers": sum(cpu_seconds(w.pid) for w in st.workers),
        "client": cpu_seconds(),
        "redis": cpu_seconds(redis_pid()),
    }


@dataclass
class Server:
    """Where subscribers connect: longrun's API or the naive app, and how to name a run's stream."""

    name: str
    port: int
    proc: Proc

    def path(self, st: Stack, run: dict[str, Any]) -> str:
        if self.name == "naive":
            return f"/events?stream={quote(st.events_key(run['run_id']), safe='')}"
        u = urlparse(run.get("events_url") or f"/runs/{run['run_id']}/events")
        return u.path


def start_naive(st: Stack) -> Server:
    port = free_port()
    proc = Proc(
        "naive-sse",
        uvicorn_argv("bench.peers.naive_sse_app:app", port),
        env={"REDIS_URL": st.env["REDIS_URL"]},
    ).start()
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return Server("naive", port, proc)


def longrun_server(st: Stack) -> Server:
    assert st.api is not None
    return Server("longrun", st.api_port, st.api)


async def submit_stamp_runs(
    st: Stack,
    runs: int,
    count: int,
    rate: float,
    start_at: float,
    pad: int = 0,
    lockstep: bool = False,
) -> list[dict[str, Any]]:
    """`runs` stamp runs emitting `count` events at `rate`/s from `start_at`. Their phases are
    spread evenly over one period (run i starts i / (runs x rate) s later), so the process
    delivers a steady runs x rate events/s; `lockstep` starts them all at the same instant,
    so each period begins with a burst of one event per run for every subscriber."""
    async with httpx.AsyncClient(base_url=st.base_url, headers=st.auth, timeout=30) as c:
        out = []
        for i in range(runs):
            r = await c.post(
                "/runs",
                json={
                    "input": f"fanout{i}",
                    "agent": "bench",
                    "params": {
                        "count": count,
                        "rate": rate,
                        "start_at": start_at + (0.0 if lockstep else i / (runs * rate)),
                        "pad": pad,
                    },
                },
            )
            if r.status_code != 202:
                raise RuntimeError(f"POST /runs answered {r.status_code}: {r.text[:300]}")
            out.append(r.json())
        return out


async def append_stamps(
    st: Stack,
    made: list[dict[str, Any]],
    count: int,
    rate: float,
    start_at: float,
    pad: int,
    lockstep: bool,
) -> None:
    """The `redis` producer: each run's `count` tokens then `done`, appended on the same
    schedule as the `stamp` agent's, each stamped just before its append. Appended through the
    append script, as a worker's copy is (`RedisIO.append`): the same stream entries, and the
    notice on the run's channel that wakes the API's hub. (An XADD of its own, as this producer
    once made, adds the entries but wakes no hub since the hub moved to pub/sub notices: the
    API then found them only at each stream's idle keep-alive, 14 s late.)"""
    import redis.asyncio as aioredis

    from shared.config import Settings
    from shared.models import encode_event
    from shared.redis.keys import Keys
    from shared.redis.runs import RedisIO

    r = aioredis.Redis.from_url(REDIS_URL)
    s = Settings.from_env(st.env)
    rio = RedisIO(r, Keys.from_settings(s), s)
    padding = " " + "x" * pad if pad else ""

    async def one(i: int, run: dict[str, Any]) -> None:
        run_id = run["run_id"]
        t0 = start_at + (0.0 if lockstep else i / (len(made) * rate))
        for n in range(count):
            delay = t0 + n / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"type": "token", "text": f"{time.time():.6f}{padding}"}
            await rio.append(run_id, 0, [encode_event(n + 1, body)], gaps=True)
        done = {"type": "done", "output": {"count": count}}
        await rio.append(run_id, 0, [encode_event(count + 1, done)], gaps=True, terminal=True)

    try:
        await asyncio.gather(*(one(i, run) for i, run in enumerate(made)))
    finally:
        await r.aclose()


async def cancel_runs(st: Stack, made: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=st.base_url, headers=st.auth, timeout=30) as c:
        for run in made:
            await c.post(f"/runs/{run['run_id']}/cancel")


async def fanout(
    st: Stack,
    server: Server,
    *,
    runs: int,
    subs_per_run: int,
    rate: float,
    count: int,
    pad: int = 0,
    slow: int = 0,
    connect_s: float = 2.0,
    lockstep: bool = False,
    producer: str = "worker",
) -> dict[str, Any]:
    """Subscribe runs x subs_per_run clients (the first `slow` of them never read after the
    headers), let each run emit `count` stamped tokens at `rate`/s, and measure delivery."""
    start_at = time.time() + connect_s
    made = await submit_stamp_runs(st, runs, count, rate, start_at, pad, lockstep)
    appending: asyncio.Task[None] | None = None
    if producer == "redis":
        appending = asyncio.create_task(
            append_stamps(st, made, count, rate, start_at, pad, lockstep)
        )
    lat: list[float] = []
    first_last = [float("inf"), 0.0]
    connected = [0]
    late = [0]
    headers = st.auth if server.name == "longrun" else {}

    def on_event(etype: str, data: str, _id: str | None) -> None:
        if etype != "token":
            return
        now = time.time()
        lat.append(now - parse_stamp(json.loads(data)["text"]))
        first_last[0] = min(first_last[0], now)
        first_last[1] = max(first_last[1], now)

    def on_connect() -> None:
        connected[0] += 1
        if time.time() > start_at:
            late[0] += 1

    pause = asyncio.Event()
    pause.set()
    tasks = []
    for r, run in enumerate(made):
        for s in range(subs_per_run):
            is_slow = r * subs_per_run + s < slow
            tasks.append(
                asyncio.create_task(
                    subscribe(
                        "127.0.0.1",
                        server.port,
                        server.path(st, run),
                        (lambda *_: None) if is_slow else on_event,
                        headers=headers,
                        pause=pause if is_slow else None,
                        connected=on_connect,
                    )
                )
            )
            if len(tasks) % 50 == 0:
                await asyncio.sleep(0)
    rss0 = rss_bytes(server.proc.pid)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0, t_cpu0 = await asyncio.to_thread(cpu_sample, st, server), time.monotonic()
    # Sample server-side figures halfway through the emission.
    await asyncio.sleep(count / rate / 2)
    # In a thread: with thousands of sockets, reading /proc and CLIENT LIST takes tens of ms,
    # which would stall this process's subscribers and show up as their latency.
    conns, (held, live) = await asyncio.to_thread(
        lambda: (
            tcp_connections_to(server.proc.pid, redis_port()),
            redis_clients(server.proc.pid, time.time() - start_at),
        )
    )
    mid: dict[str, Any] = {
        "redis_conns": conns,
        "redis_names": held,
        "redis_live": live,
        "rss": rss_bytes(server.proc.pid),
    }
    fast = [t for i, t in enumerate(tasks) if i >= slow]
    done, pending = await asyncio.wait(fast, timeout=count / rate + 30)
    # A slow subscriber whose task already ended was disconnected by the server.
    slow_dropped = sum(1 for t in tasks[:slow] if t.done())
    for t in [*pending, *tasks[:slow]]:
        t.cancel()
    cpu1, t_cpu1 = await asyncio.to_thread(cpu_sample, st, server), time.monotonic()
    await asyncio.gather(*tasks, return_exceptions=True)
    if appending is not None:
        await appending
        await cancel_runs(st, made)
    cpu = {k: round((cpu1[k] - cpu0[k]) / (t_cpu1 - t_cpu0), 3) for k in cpu0}
    errors = [repr(t.exception()) for t in done if t.exception() is not None]
    expected = count * (runs * subs_per_run - slow)
    span = first_last[1] - first_last[0]
    return {
        "design": server.name,
        "runs": runs,
        "subscribers": runs * subs_per_run,
        "slow_subscribers": slow,
        "rate_per_run": rate,
        "lockstep": lockstep,
        "producer": producer,
        "count": count,
        "pad": pad,
        "produced_per_s": runs * rate,
        "expected": expected,
        "received": len(lat),
        "delivered_per_s": len(lat) / span if span > 0 else float("nan"),
        **latency_ms(lat),
        "redis_conns": mid["redis_conns"],
        "redis_conns_by_name": mid["redis_names"],
        "redis_conns_live": sum(mid["redis_live"].values()),
        "redis_conns_live_by_name": mid["redis_live"],
        "rss_before_mb": rss0 / 2**20,
        "rss_mid_mb": mid["rss"] / 2**20,
        "cpu_cores": cpu,
        "slow_dropped_by_server": slow_dropped,
        "rss_end_mb": rss_bytes(server.proc.pid) / 2**20,
        "late_connections": late[0],
        "unfinished": len(pending),
        "errors": errors[:5],
    }
