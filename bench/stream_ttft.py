"""Benchmark 7, submit-and-stream: time to first token through `POST /runs/stream` (the queue, a
worker, Postgres, Redis, the hub) against the in-process design an app without a queue uses
(bench/peers/inprocess_app.py: the agent run inside the API under an `asyncio.Semaphore`), same
machine, same runs (`ticker`: `paced`, 20 tokens 50 ms apart, the goal's scenario; `burst`, 10
tokens at once, a closed loop bound by throughput), at 1, 50 and 500 concurrent streams.

Client-measured: each of N clients submits, reads the stream to its end and submits again
(closed loop), timing from just before it writes its request to the arrival of the first `token`
event; the arrival of the answer's head and of `start` are kept too. The designs alternate, level
by level, `repeats` times. For longrun, where the time goes, from the runs' Postgres stamps
(`created_at`: the submit's commit; `started_at`: the worker's claim) on the same clock:
  submit   request written -> the run's row committed (auth, SSE slot, admission, insert)
  pickup   row committed -> claimed by a worker (XADD, XREADGROUP, the claim statement)
  start    claimed -> `start` at the client (fence, first commit + append, hub wake, send)
  token    `start` -> first `token` at the client (the agent's first event through the same path)
Goal (issue 15): `paced` at 50 concurrent, p50 within 5 ms and p99 within 20 ms of in-process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.lib import (
    Proc,
    cpu_seconds,
    free_port,
    latency_ms,
    median,
    parser,
    percentile,
    print_table,
    record,
    run_async,
    uvicorn_argv,
    wait_http,
)
from bench.sse_client import subscribe
from bench.stack import Stack, longrun_stack

# The runs streamed. `paced`, the goal's: 20 tokens 50 ms apart (a one-second answer at 20
# tokens/s, the first token after 50 ms in both designs): N concurrent streams are N answers
# being read at once. `burst`: 10 tokens at once, so each client submits again at once: a
# closed loop whose latency is set by each design's throughput on the shared cores.
SCENARIOS = {
    "paced": {"count": 20, "interval_ms": 50},
    "burst": {"count": 10, "interval_ms": 0},
}
WORKER_CONCURRENCY = 1000  # as many runs at once as the in-process peer's semaphore allows
GOAL_P50_MS, GOAL_P99_MS, GOAL_LEVEL = 5.0, 20.0, 50


@dataclass
class Sample:
    wall0: float  # time.time() just before the request was written
    head_s: float
    start_s: float
    token_s: float
    run_id: str


async def one_stream(port: int, headers: dict[str, str], body: bytes) -> Sample:
    marks: dict[str, float] = {}
    where: dict[str, str] = {}

    def on_head(h: dict[str, str]) -> None:
        marks["head"] = time.perf_counter()
        where["run"] = h.get("content-location", "").rsplit("/", 1)[-1]

    def on_event(etype: str, _data: str, _id: str | None) -> None:
        if etype in ("start", "token") and etype not in marks:
            marks[etype] = time.perf_counter()

    wall0, t0 = time.time(), time.perf_counter()
    await subscribe(
        "127.0.0.1", port, "/runs/stream", on_event, headers=headers, body=body, on_head=on_head
    )
    if "token" not in marks:
        raise RuntimeError(f"a stream ended without a token ({sorted(marks)})")
    return Sample(
        wall0,
        marks["head"] - t0,
        marks.get("start", marks["token"]) - t0,
        marks["token"] - t0,
        where.get("run", ""),
    )


async def level(
    port: int, headers: dict[str, str], scenario: str, clients: int, rounds: int
) -> dict[str, Any]:
    params = SCENARIOS[scenario]
    body = orjson.dumps({"input": "bench", "agent": "ticker", "params": params})
    # Paced clients start spread over one answer's length: N answers in flight at any moment,
    # about N/s new ones arriving steadily (not N at the same instant, every second).
    spread = params["count"] * params["interval_ms"] / 1000

    async def client(i: int) -> list[Sample]:
        await asyncio.sleep(spread * i / clients)
        return [await asyncio.wait_for(one_stream(port, headers, body), 120) for _ in range(rounds)]

    t0 = time.perf_counter()
    got = await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    samples = [s for per in got for s in per]
    return {
        "scenario": scenario,
        "concurrent": clients,
        "streams_per_s": round(len(samples) / wall, 1),
        "ttft": latency_ms([s.token_s for s in samples]),
        "head_p50_ms": round(percentile([s.head_s * 1000 for s in samples], 50), 3),
        "samples": samples,
    }


async def breakdown(st: Stack, samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Where longrun's time to first token goes, per stage (see the module docstring)."""
    import asyncpg

    conn = await asyncpg.connect(st.database_url)
    try:
        rows = await conn.fetch(
            "SELECT run_id::text AS id, extract(epoch FROM created_at) AS c, "
            "extract(epoch FROM started_at) AS s FROM runs WHERE run_id::text = ANY($1)",
            [s.run_id for s in samples],
        )
    finally:
        await conn.close()
    stamps = {r["id"]: (float(r["c"]), float(r["s"])) for r in rows if r["s"] is not None}
    stages: dict[str, list[float]] = {"submit": [], "pickup": [], "start": [], "token": []}
    for s in samples:
        if s.run_id not in stamps:
            continue
        created, started = stamps[s.run_id]
        stages["submit"].append(created - s.wall0)
        stages["pickup"].append(started - created)
        stages["start"].append(s.wall0 + s.start_s - started)
        stages["token"].append(s.token_s - s.start_s)
    return {k: latency_ms(v) for k, v in stages.items()}


def start_inprocess() -> tuple[Proc, int]:
    port = free_port()
    proc = Proc("inprocess-api", uvicorn_argv("bench.peers.inprocess_app:app", port)).start()
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


async def main(smoke: bool, skip_peers: bool, quick: bool = False) -> dict[str, Any]:
    # (scenario, concurrent clients, streams each)
    levels = (
        [("paced", 1, 2), ("paced", 5, 1), ("burst", 5, 1)]
        if smoke
        else [("paced", 1, 30), ("paced", GOAL_LEVEL, 4), ("burst", GOAL_LEVEL, 10)]
        if quick
        else [
            ("paced", 1, 30),
            ("paced", GOAL_LEVEL, 4),
            ("paced", 500, 2),
            ("burst", 1, 100),
            ("burst", GOAL_LEVEL, 10),
            ("burst", 500, 2),
        ]
    )
    repeats = 1 if smoke or quick else 3
    rows: list[dict[str, Any]] = []
    async with longrun_stack() as st:
        st.start_workers(1, concurrency=WORKER_CONCURRENCY)
        assert st.api is not None
        # (name, port, headers, the server processes whose CPU it costs)
        designs = [
            ("longrun POST /runs/stream", st.api_port, st.auth, [st.api, *st.workers]),
        ]
        peer = None
        if not skip_peers:
            peer, peer_port = start_inprocess()
            designs.append(("in-process + Semaphore", peer_port, {}, [peer]))
        try:
            for _, port, headers, _procs in designs:  # warm-up: connections, pools, caches
                await level(port, headers, "burst", 2 if smoke else 10, 2)
            for repeat in range(repeats):
                for scenario, clients, rounds in levels:
                    for name, port, headers, procs in designs:
                        cpu0 = [cpu_seconds(p.pid) for p in procs]
                        r = await level(port, headers, scenario, clients, rounds)
                        samples = r.pop("samples")
                        used = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
                        # CPU per stream of the API (or the peer) and of the workers, in ms
                        r["cpu_ms_per_stream"] = [round(u * 1000 / len(samples), 2) for u in used]
                        if name.startswith("longrun"):
                            r["stages"] = await breakdown(st, samples)
                        rows.append({"design": name, "repeat": repeat, **r})
        finally:
            if peer is not None:
                peer.stop()
    print_table(
        "submit-and-stream: time to first token (ticker), client-measured",
        ["design", "scenario", "concurrent", "repeat", "streams/s", "n", "p50 ms", "p99 ms",
         "max ms", "head p50", "CPU ms/stream (API, worker)"],
        [
            [
                r["design"],
                r["scenario"],
                r["concurrent"],
                r["repeat"],
                r["streams_per_s"],
                r["ttft"]["n"],
                r["ttft"]["p50_ms"],
                r["ttft"]["p99_ms"],
                r["ttft"]["max_ms"],
                r["head_p50_ms"],
                "/".join(str(c) for c in r["cpu_ms_per_stream"]),
            ]
            for r in rows
        ],
    )  # fmt: skip
    staged = [r for r in rows if "stages" in r]
    print_table(
        "longrun: where the time to first token goes (p50 / p99 ms per stage)",
        ["scenario", "concurrent", "repeat", "submit", "pickup", "start", "token"],
        [
            [r["scenario"], r["concurrent"], r["repeat"]]
            + [f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f}" for v in r["stages"].values()]
            for r in staged
        ],
    )
    return verdict(
        rows, sorted({(sc, c) for sc, c, _ in levels}, key=lambda x: (x[0] != "paced", x[1]))
    )


def verdict(rows: list[dict[str, Any]], levels: list[tuple[str, int]]) -> dict[str, Any]:
    """Per scenario and level, the medians over repeats of each design's p50 and p99, their
    differences and ratios; the goal is judged on `paced` at GOAL_LEVEL."""
    summary: dict[str, Any] = {}
    for scenario, clients in levels:
        figures: dict[str, dict[str, float]] = {}
        for design in sorted({r["design"] for r in rows}):
            mine = [
                r
                for r in rows
                if r["design"] == design
                and r["scenario"] == scenario
                and r["concurrent"] == clients
            ]
            figures[design] = {
                "p50_ms": median(r["ttft"]["p50_ms"] for r in mine),
                "p99_ms": median(r["ttft"]["p99_ms"] for r in mine),
            }
        summary[f"{scenario} {clients}"] = figures
        ours = next(v for k, v in figures.items() if k.startswith("longrun"))
        base = next((v for k, v in figures.items() if not k.startswith("longrun")), None)
        if base is None:
            print(f"{scenario} {clients}: longrun p50 {ours['p50_ms']} p99 {ours['p99_ms']} ms")
            continue
        d50, d99 = ours["p50_ms"] - base["p50_ms"], ours["p99_ms"] - base["p99_ms"]
        figures["diff"] = {"p50_ms": round(d50, 3), "p99_ms": round(d99, 3)}
        figures["ratio"] = {
            "p50": round(ours["p50_ms"] / base["p50_ms"], 2),
            "p99": round(ours["p99_ms"] / base["p99_ms"], 2),
        }
        print(
            f"{scenario} {clients} concurrent: longrun p50 {ours['p50_ms']} / p99 "
            f"{ours['p99_ms']} ms, in-process p50 {base['p50_ms']} / p99 {base['p99_ms']} ms: "
            f"+{d50:.2f} / +{d99:.2f} ms ({figures['ratio']['p50']}x / "
            f"{figures['ratio']['p99']}x)"
        )
    goal = summary.get(f"paced {GOAL_LEVEL}", {}).get("diff")
    met = goal is not None and goal["p50_ms"] <= GOAL_P50_MS and goal["p99_ms"] <= GOAL_P99_MS
    if goal is not None:
        print(
            f"goal, paced at {GOAL_LEVEL} concurrent (p50 within {GOAL_P50_MS} ms, p99 within "
            f"{GOAL_P99_MS} ms of in-process): {'OK' if met else 'MISSED'}"
        )
    return {"rows": rows, "summary": summary, "goal_met": met}


if __name__ == "__main__":
    p = parser(__doc__ or "")
    p.add_argument("--quick", action="store_true", help="the goal's levels only, once")
    args = p.parse_args()
    result = run_async(main(args.smoke, args.skip_peers, args.quick))
    record("stream_ttft", result, smoke=args.smoke)
