"""Benchmark: fairness (issue 19). A real API and one worker with a fixed number of slots run a
short sleep-based agent (`ticker`, 2 ticks of 100 ms: a run-slot turnover of about 0.2 s).
User B's queue wait (started_at - created_at, from GET /runs) is measured for 10 runs alone,
then again while user A holds a flood of queued runs, in the same run; and the same with
fairness off (LONGRUN_FAIR=0) for contrast. The flood's remaining runs are dropped with the
scratch deployment afterwards (they would only take minutes of the shared machine).

Goal (issue 19): with A's flood queued, B's runs start within about one run-slot turnover, not
after A's backlog.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
import redis

from bench.lib import (
    REDIS_URL,
    median,
    parser,
    percentile,
    print_table,
    record,
    run_async,
    wait_until,
)
from bench.loadgen import post_many
from bench.stack import Stack, _run_cli, longrun_stack
from shared.config import Settings
from shared.redis.keys import Keys

SLOTS = 8
TICKER = {"count": 2, "interval_ms": 100}
BODY = json.dumps({"input": "flood", "agent": "ticker", "params": TICKER})
B_RUNS = 10


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _b_waits(st: Stack, b_key: str) -> list[float]:
    """Submit B's runs one after another, wait for all to start; their queue waits (s)."""
    auth = {"Authorization": f"Bearer {b_key}"}
    async with httpx.AsyncClient(base_url=st.base_url, headers=auth, timeout=30) as c:
        ids = []
        for _ in range(B_RUNS):
            r = await c.post("/runs", json={"input": "b", "agent": "ticker", "params": TICKER})
            r.raise_for_status()
            ids.append(r.json()["run_id"])
        deadline = time.monotonic() + 600
        waits: dict[str, float] = {}
        while len(waits) < len(ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"B's runs did not start: {len(waits)}/{len(ids)}")
            for rid in ids:
                if rid in waits:
                    continue
                run = (await c.get(f"/runs/{rid}")).json()
                if run["started_at"]:
                    waits[rid] = _t(run["started_at"]) - _t(run["created_at"])
            await asyncio.sleep(0.05)
        return [waits[r] for r in ids]


async def scenario(fair: bool, flood: int) -> dict[str, Any]:
    env = {"LONGRUN_FAIR": "1" if fair else "0"}
    async with longrun_stack(extra_env=env) as st:
        b_key = _run_cli(["keys", "create", "--user", "b"], st.env).strip().splitlines()[-1]
        procs = st.start_workers(1, SLOTS, extra_env=env)
        r = redis.Redis.from_url(REDIS_URL)
        try:  # measured from a worker that is up (its first heartbeat), not one starting
            live = Keys.from_settings(Settings.from_env(st.env)).workers
            wait_until(lambda: r.zcard(live) > 0, 60, "worker up", procs[0])
        finally:
            r.close()
        alone = await _b_waits(st, b_key)
        enq = await post_many(f"{st.base_url}/runs", BODY, st.auth["Authorization"], flood)
        if enq["errors"]:
            raise RuntimeError(f"flood submit errors: {enq['errors'][:3]}")
        r = redis.Redis.from_url(REDIS_URL)
        try:
            backlog_before = st.backlog(r)
            under_flood = await _b_waits(st, b_key)
            backlog_after = st.backlog(r)
        finally:
            r.close()
    return {
        "fair": fair,
        "flood": flood,
        "slots": SLOTS,
        "alone_median_s": median(alone),
        "alone_max_s": max(alone),
        "flood_median_s": median(under_flood),
        "flood_p90_s": percentile(under_flood, 90),
        "flood_max_s": max(under_flood),
        "a_backlog_when_b_submitted": backlog_before,
        "a_backlog_when_b_started": backlog_after,
    }


async def main_async(smoke: bool, flood: int) -> dict[str, Any]:
    flood = 60 if smoke else flood
    results = [await scenario(True, flood), await scenario(False, flood)]
    print_table(
        f"B's queue wait (s), {B_RUNS} runs, 1 worker x {SLOTS} slots, ticker 2 x 100 ms; "
        f"A's flood: {flood} queued runs",
        [
            "fairness",
            "alone median",
            "alone max",
            "flood median",
            "flood p90",
            "flood max",
            "A backlog left",
        ],
        [
            [
                "on" if x["fair"] else "off",
                x["alone_median_s"],
                x["alone_max_s"],
                x["flood_median_s"],
                x["flood_p90_s"],
                x["flood_max_s"],
                x["a_backlog_when_b_started"],
            ]
            for x in results
        ],
    )
    return {"results": results}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--flood", type=int, default=1000, help="A's queued runs (default 1000)")
    a = p.parse_args()
    result = run_async(main_async(a.smoke, a.flood))
    record("fairness", result, smoke=a.smoke)


if __name__ == "__main__":
    main()
