"""Benchmark 5, SSE fan-out: delivery latency (producer's clock before the append -> the client
has the event) and Redis connections held by the serving process, longrun's API against the naive
one-`XREAD BLOCK`-per-subscriber sse-starlette app, on the same runs' streams, same run.

Scenarios: 100 subscribers of one run at 100 ev/s (10k ev/s delivered); 2,000 subscribers, 100
on each of 20 runs at 5 ev/s each (10k ev/s delivered).
The first scenario is repeated 3 times (designs interleaved), the second runs once.
Goal (BASELINES.md): p99 <= 10 ms at 100 subs / 10k ev/s on <= 4 Redis connections.
"""

from __future__ import annotations

from typing import Any

from bench.fanout import fanout, longrun_server, start_naive
from bench.lib import median, parser, print_table, record, run_async
from bench.stack import longrun_stack


async def main(smoke: bool, skip_peers: bool) -> dict[str, Any]:
    if smoke:
        scenarios = [
            {"runs": 1, "subs_per_run": 5, "rate": 100.0, "count": 20, "connect_s": 1.0},
            {"runs": 2, "subs_per_run": 5, "rate": 20.0, "count": 5, "connect_s": 1.0},
        ]
    else:
        scenarios = [
            *[{"runs": 1, "subs_per_run": 100, "rate": 100.0, "count": 600, "connect_s": 2.0}] * 3,
            {"runs": 20, "subs_per_run": 100, "rate": 5.0, "count": 50, "connect_s": 10.0},
        ]
    rows: list[dict[str, Any]] = []
    async with longrun_stack() as st:
        st.start_workers(1, concurrency=64)
        servers = [longrun_server(st)]
        naive = None if skip_peers else start_naive(st)
        if naive is not None:
            servers.append(naive)
        try:
            for sc in scenarios:
                for server in servers:
                    rows.append(await fanout(st, server, **sc))  # type: ignore[arg-type]
        finally:
            if naive is not None:
                naive.proc.stop()
    print_table(
        "SSE fan-out: latency from the producer's clock before append to the client",
        [
            "design",
            "subscribers",
            "runs",
            "produced ev/s",
            "delivered ev/s",
            "received",
            "expected",
            "p50 ms",
            "p99 ms",
            "max ms",
            "Redis conns",
            "late conns",
            "CPU cores server/worker/client/redis",
        ],
        [
            [
                r["design"],
                r["subscribers"],
                r["runs"],
                r["produced_per_s"],
                r["delivered_per_s"],
                r["received"],
                r["expected"],
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["redis_conns"],
                r["late_connections"],
                "/".join(f"{v:.2f}" for v in r["cpu_cores"].values()),
            ]
            for r in rows
        ],
    )
    for r in rows:
        print(
            f"Redis connections of {r['design']} at {r['subscribers']} subscribers, by client "
            f"name: {r['redis_conns_by_name']}"
        )
    a = [r for r in rows if r["design"] == "longrun" and r["subscribers"] == rows[0]["subscribers"]]
    p99, conns = median(r["p99_ms"] for r in a), max(r["redis_conns"] for r in a)
    ok = p99 <= 10 and conns <= 4
    print(
        f"longrun at {a[0]['subscribers']} subs, median of {len(a)}: p99 {p99} ms, "
        f"{conns} Redis conns (goal p99 <= 10 ms on <= 4 conns) {'OK' if ok else 'MISSED'}"
    )
    naive = [r for r in rows if r["design"] == "naive" and r["subscribers"] == a[0]["subscribers"]]
    if naive:
        print(
            f"naive at the same load: p99 {median(r['p99_ms'] for r in naive)} ms, "
            f"{max(r['redis_conns'] for r in naive)} Redis conns"
        )
    return {"rows": rows, "longrun_p99_ms": p99, "longrun_redis_conns": conns, "goal_met": ok}


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    record("sse_fanout", run_async(main(args.smoke, args.skip_peers)), smoke=args.smoke)
