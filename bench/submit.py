"""Benchmark 1, submit: `POST /runs` (ticker agent) under concurrency, against a bare FastAPI
endpoint answering 202 with a pydantic body, same uvicorn settings, interleaved in the same run.
No worker runs meanwhile (the queue just grows): this measures the API's submit path alone.

Goals (issue 6): req/s >= 0.6x bare, p99 <= 2x bare.
"""

from __future__ import annotations

import json
from typing import Any

from bench.lib import (
    Proc,
    free_port,
    median,
    parser,
    print_table,
    ratio,
    record,
    run_async,
    uvicorn_argv,
    wait_http,
)
from bench.loadgen import have_wrk, run_load
from bench.stack import longrun_stack

KEYED = "longrun POST /runs + Idempotency-Key"
BODY = json.dumps({"input": "bench", "agent": "ticker", "params": {"count": 1, "interval_ms": 0}})


async def main(smoke: bool) -> dict[str, Any]:
    repeats, duration, conns, warm = (1, 1.0, 4, 0.0) if smoke else (3, 8.0, 64, 2.0)
    bare_port = free_port()
    bare = Proc("bare-api", uvicorn_argv("bench.peers.bare_app:app", bare_port)).start()
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/health", bare)
        async with longrun_stack() as st:
            auth = st.auth["Authorization"]
            targets = {
                "bare FastAPI 202": (f"http://127.0.0.1:{bare_port}/runs", None, False),
                "longrun POST /runs": (f"{st.base_url}/runs", auth, False),
            }
            if have_wrk():  # every request with a fresh Idempotency-Key
                targets[KEYED] = (f"{st.base_url}/runs", auth, True)
            if warm:
                for url, auth, keyed in targets.values():
                    run_load(url, BODY, auth, connections=conns, duration=warm, keyed=keyed)
            rounds: list[dict[str, dict[str, Any]]] = []
            for _ in range(repeats):
                rounds.append(
                    {
                        name: run_load(
                            url, BODY, auth, connections=conns, duration=duration, keyed=keyed
                        )
                        for name, (url, auth, keyed) in targets.items()
                    }
                )
    finally:
        bare.stop()
    return summarize(rounds)


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    names = list(rounds[0])
    med = {
        n: {k: median(r[n][k] for r in rounds) for k in ("rps", "p50_ms", "p99_ms")} for n in names
    }
    bare, ours = names[:2]
    rps_ratios = [ratio(r[ours]["rps"], r[bare]["rps"]) for r in rounds]
    p99_ratios = [ratio(r[ours]["p99_ms"], r[bare]["p99_ms"]) for r in rounds]
    errors = {n: sum(r[n]["errors"] for r in rounds) for n in names}
    rows = [
        [
            n,
            med[n]["rps"],
            med[n]["p50_ms"],
            med[n]["p99_ms"],
            errors[n],
            1.0 if n == bare else median(ratio(r[n]["rps"], r[bare]["rps"]) for r in rounds),
        ]
        for n in names
    ]
    print_table(
        f"submit: {rounds[0][bare]['generator']}, median of {len(rounds)}",
        ["endpoint", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs bare"],
        rows,
    )
    rr, pr = median(rps_ratios), median(p99_ratios)
    print(
        f"ratio req/s {rr} (goal >= 0.6) {'OK' if rr >= 0.6 else 'MISSED'}; "
        f"p99 {pr}x bare (goal <= 2) {'OK' if pr <= 2 else 'MISSED'}"
    )
    return {
        "generator": rounds[0][bare]["generator"],
        "rounds": rounds,
        "median": med,
        "rps_ratio": rr,
        "rps_ratios": rps_ratios,
        "p99_ratio": pr,
        "p99_ratios": p99_ratios,
        "errors": errors,
        "goal_met": rr >= 0.6 and pr <= 2,
    }


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    record("submit", run_async(main(args.smoke)), smoke=args.smoke)
