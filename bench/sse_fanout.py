"""Benchmark 5, SSE fan-out: delivery latency (the event's append -> the client has it) and the
Redis connections of the serving process, longrun's API against the naive
one-`XREAD BLOCK`-per-subscriber sse-starlette app, on the same runs' streams, same run.

Scenarios (producer `redis`: this process appends each event, stamped just before its XADD;
see bench/fanout.py):
- 100 subscribers of one run at 100 ev/s (10k ev/s delivered), 3 times, designs interleaved;
- 2,000 subscribers, 100 on each of 20 runs at 5 ev/s (10k ev/s delivered), the runs' phases
  spread over the 200 ms period;
- the same in lockstep (longrun only): all 20 runs append at the same instant, so every 200 ms
  the API has 2,000 deliveries to make at once (a burst test: the p99 is the time to drain it);
- 100 subscribers with a real worker as the producer (longrun only): end to end, including the
  worker's batching and inline archiving before the append.

Redis connections: all the serving process holds (`held`, by client name) and those that carried
a command while the stream was live (`live`: pooled connections idle since the burst of requests
that connected the subscribers are left out).
Goals (issue 6): p99 <= 10 ms at 100 subscribers on <= 4 Redis connections for the streams; p99
< 50 ms at 2,000 subscribers and 10k ev/s delivered, every event delivered.
"""

from __future__ import annotations

from typing import Any

from bench.fanout import fanout, longrun_server, start_naive
from bench.lib import median, parser, print_table, record, run_async
from bench.stack import longrun_stack

HUB = "longrun-api-hub"


async def main(smoke: bool, skip_peers: bool) -> dict[str, Any]:
    small: dict[str, Any]
    many: dict[str, Any]
    if smoke:
        small = {"runs": 1, "subs_per_run": 5, "rate": 100.0, "count": 20, "connect_s": 1.0}
        many = {"runs": 2, "subs_per_run": 5, "rate": 20.0, "count": 5, "connect_s": 1.0}
        repeats = 1
    else:
        small = {"runs": 1, "subs_per_run": 100, "rate": 100.0, "count": 600, "connect_s": 2.0}
        many = {"runs": 20, "subs_per_run": 100, "rate": 5.0, "count": 50, "connect_s": 10.0}
        repeats = 3
    rows: list[dict[str, Any]] = []
    async with longrun_stack() as st:
        servers = [longrun_server(st)]
        naive = None if skip_peers else start_naive(st)
        if naive is not None:
            servers.append(naive)
        try:
            for sc in [*[small] * repeats, many]:
                for server in servers:
                    rows.append(await fanout(st, server, producer="redis", **sc))
            rows.append(await fanout(st, servers[0], producer="redis", lockstep=True, **many))
            st.start_workers(1, concurrency=64)
            rows.append(await fanout(st, servers[0], producer="worker", **small))
        finally:
            if naive is not None:
                naive.proc.stop()
    print_table(
        "SSE fan-out: latency from the producer's stamp to the client",
        [
            "design",
            "producer",
            "subscribers",
            "runs",
            "produced ev/s",
            "delivered ev/s",
            "received",
            "expected",
            "p50 ms",
            "p99 ms",
            "max ms",
            "Redis conns held",
            "of which hub",
            "live",
            "late conns",
            "CPU cores server/worker/client/redis",
        ],
        [
            [
                r["design"],
                r["producer"] + (" lockstep" if r["lockstep"] else ""),
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
                r["redis_conns_by_name"].get(HUB, "-"),
                r["redis_conns_live"],
                r["late_connections"],
                "/".join(f"{v:.2f}" for v in r["cpu_cores"].values()),
            ]
            for r in rows
        ],
    )
    for r in rows:
        print(
            f"Redis connections of {r['design']} at {r['subscribers']} subscribers "
            f"({r['producer']}{' lockstep' if r['lockstep'] else ''}), held: "
            f"{r['redis_conns_by_name']}, live: {r['redis_conns_live_by_name']}"
        )
    return verdict(rows)


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def pick(design: str, subs: int, lockstep: bool = False) -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if r["design"] == design
            and r["subscribers"] == subs
            and r["producer"] == "redis"
            and r["lockstep"] == lockstep
        ]

    small_subs, many_subs = rows[0]["subscribers"], max(r["subscribers"] for r in rows)
    a = pick("longrun", small_subs)
    p99 = median(r["p99_ms"] for r in a)
    hub = max(r["redis_conns_by_name"].get(HUB, 0) for r in a)
    live = max(r["redis_conns_live"] for r in a)
    ok_small = p99 <= 10 and hub <= 4 and live <= 4
    print(
        f"longrun at {small_subs} subs, median of {len(a)}: p99 {p99} ms on {hub} hub Redis "
        f"connections ({live} live; {max(r['redis_conns'] for r in a)} held in all) "
        f"(goal p99 <= 10 ms on <= 4) {'OK' if ok_small else 'MISSED'}"
    )
    b = pick("longrun", many_subs)
    ok_many = bool(b) and all(r["p99_ms"] < 50 and r["received"] == r["expected"] for r in b)
    if b:
        print(
            f"longrun at {many_subs} subs: p99 {b[0]['p99_ms']} ms, "
            f"{b[0]['delivered_per_s']:.0f} ev/s delivered, {b[0]['received']}/"
            f"{b[0]['expected']} events (goal p99 < 50 ms, all delivered) "
            f"{'OK' if ok_many else 'MISSED'}"
        )
    for subs in (small_subs, many_subs):
        naive = pick("naive", subs)
        if naive:
            print(
                f"naive at {subs} subs: p99 {median(r['p99_ms'] for r in naive)} ms, "
                f"{max(r['redis_conns'] for r in naive)} Redis conns"
            )
    return {
        "rows": rows,
        "longrun_p99_ms": p99,
        "longrun_hub_redis_conns": hub,
        "longrun_live_redis_conns": live,
        "goal_met": ok_small,
        "goal_many_met": ok_many,
    }


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    record("sse_fanout", run_async(main(args.smoke, args.skip_peers)), smoke=args.smoke)
