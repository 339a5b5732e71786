"""Benchmark 6, memory: (a) a worker holding many concurrent slow ticker runs, bytes per
in-flight run from the RSS delta; (b) the API holding N idle SSE subscribers (runs still queued,
no worker), bytes per subscriber and Redis connections; (c) a slow client: one subscriber stops
reading while 99 others receive 100 ev/s of ~4 KB events; the others' latency against the same
load without a slow client, and the API's RSS.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import redis

from bench.fanout import fanout, longrun_server
from bench.lib import (
    REDIS_URL,
    parser,
    print_table,
    record,
    redis_clients_of,
    redis_port,
    rss_bytes,
    run_async,
    tcp_connections_to,
    wait_until,
)
from bench.sse_client import subscribe
from bench.stack import Stack, longrun_stack, run_counts


async def submit(
    st: Stack, n: int, params: dict[str, Any], agent: str = "ticker"
) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(
        base_url=st.base_url, headers=st.auth, timeout=30, limits=limits
    ) as c:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> dict[str, Any]:
            async with sem:
                r = await c.post("/runs", json={"input": f"m{i}", "agent": agent, "params": params})
                if r.status_code != 202:
                    raise RuntimeError(f"POST /runs answered {r.status_code}: {r.text[:200]}")
                return dict(r.json())

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def settled_rss(pid: int, seconds: float = 2.0) -> int:
    """Max RSS over a short window (allocations settle after a burst)."""
    best = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        best = max(best, rss_bytes(pid))
        time.sleep(0.1)
    return best


async def worker_in_flight(st: Stack, n: int) -> dict[str, Any]:
    (w,) = st.start_workers(1, concurrency=n, extra_env={"LONGRUN_DRAIN_SECONDS": "0.5"})
    r = redis.Redis.from_url(REDIS_URL)
    try:
        wait_until(lambda: r.zcard(f"{st.prefix}:workers") > 0, 30, "worker registered", w)
    finally:
        r.close()
    idle = settled_rss(w.pid)
    await submit(st, n, {"count": 120, "interval_ms": 1000})
    deadline = time.monotonic() + 60
    while (await run_counts(st.database_url)).get("running", 0) < n:
        if time.monotonic() > deadline or not w.alive():
            raise RuntimeError(f"only {await run_counts(st.database_url)} after 60 s")
        await asyncio.sleep(0.2)
    loaded = settled_rss(w.pid, 3.0)
    conns = tcp_connections_to(w.pid, redis_port())
    names = redis_clients_of(w.pid)
    st.stop_workers()
    return {
        "runs": n,
        "rss_idle_mb": idle / 2**20,
        "rss_loaded_mb": loaded / 2**20,
        "bytes_per_run": (loaded - idle) / n,
        "worker_redis_conns": conns,
        "worker_redis_conns_by_name": names,
    }


async def idle_subscribers(st: Stack, n: int, runs: int) -> dict[str, Any]:
    assert st.api is not None
    made = await submit(st, runs, {"count": 1, "interval_ms": 0})
    before = settled_rss(st.api.pid, 1.0)
    conns_before = tcp_connections_to(st.api.pid, redis_port())
    connected = [0]
    stop = asyncio.Event()
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(
            subscribe(
                "127.0.0.1",
                st.api_port,
                f"/runs/{made[i % runs]['run_id']}/events",
                lambda *_: None,
                headers=st.auth,
                stop=stop,
                connected=lambda: connected.__setitem__(0, connected[0] + 1),
            )
        )
        for i in range(n)
    ]
    while connected[0] < n and time.perf_counter() - t0 < 60:
        if any(t.done() for t in tasks):
            bad = next(t for t in tasks if t.done())
            raise RuntimeError(f"a subscriber ended early: {bad.exception()!r}")
        await asyncio.sleep(0.05)
    connect_s = time.perf_counter() - t0
    after = settled_rss(st.api.pid, 2.0)
    conns = tcp_connections_to(st.api.pid, redis_port())
    names = redis_clients_of(st.api.pid)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "subscribers": n,
        "connected": connected[0],
        "runs": runs,
        "connect_s": connect_s,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "bytes_per_subscriber": (after - before) / n,
        "api_redis_conns_before": conns_before,
        "api_redis_conns": conns,
        "api_redis_conns_by_name": names,
    }


async def slow_client(st: Stack, smoke: bool) -> dict[str, Any]:
    # 10 subscribers x 100 ev/s x 32 KB: the slow one is sent ~32 MB in 10 s, well past what
    # the socket buffers and the client's reader hold, so the server must buffer, drop or block.
    sc: dict[str, Any] = {
        "runs": 1,
        "subs_per_run": 10,
        "rate": 100.0,
        "count": 1000,
        "pad": 32768,
        "connect_s": 2.0,
    }
    if smoke:
        sc = {**sc, "subs_per_run": 4, "count": 20, "pad": 4096, "connect_s": 1.0}
    st.start_workers(1)
    base = await fanout(st, longrun_server(st), **sc)
    slow = await fanout(st, longrun_server(st), slow=1, **sc)
    assert st.api is not None
    rss_after = rss_bytes(st.api.pid)
    st.stop_workers()
    return {"without": base, "with_slow": slow, "api_rss_after_mb": rss_after / 2**20}


async def main(smoke: bool) -> dict[str, Any]:
    runs_in_flight, subs = (20, 20) if smoke else (1000, 1000)
    async with longrun_stack() as st:
        slow = await slow_client(st, smoke)
        worker = await worker_in_flight(st, runs_in_flight)
        idle = await idle_subscribers(st, subs, max(1, subs // 10))
    print_table(
        "memory: worker holding slow ticker runs (count 120, 1 s apart)",
        ["runs in flight", "RSS idle MB", "RSS loaded MB", "bytes per run", "worker Redis conns"],
        [
            [
                worker["runs"],
                worker["rss_idle_mb"],
                worker["rss_loaded_mb"],
                worker["bytes_per_run"],
                worker["worker_redis_conns"],
            ]
        ],
    )
    print_table(
        "memory: API holding idle SSE subscribers (queued runs, no worker)",
        [
            "subscribers",
            "runs",
            "connect s",
            "RSS before MB",
            "RSS after MB",
            "bytes per subscriber",
            "API Redis conns (before)",
        ],
        [
            [
                idle["subscribers"],
                idle["runs"],
                idle["connect_s"],
                idle["rss_before_mb"],
                idle["rss_after_mb"],
                idle["bytes_per_subscriber"],
                f"{idle['api_redis_conns']} ({idle['api_redis_conns_before']})",
            ]
        ],
    )
    print(f"worker Redis connections by name: {worker['worker_redis_conns_by_name']}")
    print(f"API Redis connections by name: {idle['api_redis_conns_by_name']}")
    w, s = slow["without"], slow["with_slow"]
    print_table(
        "slow client: 1 subscriber stops reading; the others' delivery latency",
        [
            "case",
            "subscribers reading",
            "received",
            "expected",
            "p50 ms",
            "p99 ms",
            "max ms",
            "API RSS before/mid/end MB",
            "slow one dropped",
        ],
        [
            [
                "no slow client",
                w["subscribers"],
                w["received"],
                w["expected"],
                w["p50_ms"],
                w["p99_ms"],
                w["max_ms"],
                f"{w['rss_before_mb']:.0f}/{w['rss_mid_mb']:.0f}/{w['rss_end_mb']:.0f}",
                "-",
            ],
            [
                "1 slow client",
                s["subscribers"] - 1,
                s["received"],
                s["expected"],
                s["p50_ms"],
                s["p99_ms"],
                s["max_ms"],
                f"{s['rss_before_mb']:.0f}/{s['rss_mid_mb']:.0f}/{s['rss_end_mb']:.0f}",
                s["slow_dropped_by_server"],
            ],
        ],
    )
    return {
        "worker": worker,
        "idle_subscribers": idle,
        "slow_client": slow,
        "slow_p99_ratio": s["p99_ms"] / w["p99_ms"] if w["p99_ms"] else None,
    }


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    record("memory", run_async(main(args.smoke)), smoke=args.smoke)
