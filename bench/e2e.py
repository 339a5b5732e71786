"""Benchmark 2, end-to-end: submit a ticker run (count=1, interval_ms=0) and time until the SSE
client receives `done`; p50/p99 over N runs, one at a time, then with 16 in flight. One API
process and one worker process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlparse

import httpx

from bench.lib import latency_ms, parser, print_table, record, run_async
from bench.sse_client import subscribe
from bench.stack import Stack, longrun_stack

BODY = {"input": "bench", "agent": "ticker", "params": {"count": 1, "interval_ms": 0}}


def events_path(st: Stack, answer: dict[str, Any]) -> str:
    url = answer.get("events_url") or f"/runs/{answer['run_id']}/events"
    u = urlparse(url)
    return u.path + (f"?{u.query}" if u.query else "")


async def one_run(st: Stack, client: httpx.AsyncClient) -> float:
    """Seconds from just before POST /runs to receipt of the run's `done` event."""
    t0 = time.perf_counter()
    resp = await client.post("/runs", json=BODY)
    if resp.status_code != 202:
        raise RuntimeError(f"POST /runs answered {resp.status_code}: {resp.text[:300]}")
    seen: list[str] = []
    await asyncio.wait_for(
        subscribe(
            "127.0.0.1",
            st.api_port,
            events_path(st, resp.json()),
            lambda etype, _d, _i: seen.append(etype),
            headers=st.auth,
        ),
        30,
    )
    if not seen or seen[-1] != "done":
        raise RuntimeError(f"run ended with {seen[-1:]} instead of done")
    return time.perf_counter() - t0


async def measure(st: Stack, n: int, in_flight: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(in_flight)
    lat: list[float] = []
    limits = httpx.Limits(max_connections=in_flight)
    async with httpx.AsyncClient(
        base_url=st.base_url, headers=st.auth, limits=limits, timeout=30
    ) as client:

        async def task() -> None:
            async with sem:
                lat.append(await one_run(st, client))

        t0 = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(n)))
        wall = time.perf_counter() - t0
    return {"in_flight": in_flight, "runs_per_s": n / wall, **latency_ms(lat)}


async def main(smoke: bool) -> dict[str, Any]:
    n = 10 if smoke else 300
    async with longrun_stack() as st:
        st.start_workers(1)
        await measure(st, 3 if smoke else 20, 1)  # warm-up: connections, pools, caches
        rows = [await measure(st, n, 1), await measure(st, n, 16)]
    print_table(
        f"end-to-end: submit -> SSE `done`, ticker count=1 interval 0, N={n}",
        ["in flight", "runs/s", "p50 ms", "p99 ms", "max ms"],
        [[r["in_flight"], r["runs_per_s"], r["p50_ms"], r["p99_ms"], r["max_ms"]] for r in rows],
    )
    return {"n": n, "rows": rows}


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    record("e2e", run_async(main(args.smoke)), smoke=args.smoke)
