"""Benchmark 10, growth (issue 18): does a deployment holding a million finished runs and twenty
million archived events answer as fast as an empty one? Two stacks (bench/stack.py: a scratch
database, the API, workers started for the dispatch measure) in the same run: "empty", holding
only the bench user's 1,000 finished runs (20 archived events each: something to list and
replay), and "full", holding those plus 1,000,000 finished runs over the last 30 days (100,000
of them the bench user's, the rest spread over 1,000 users) and their 20,000,000 events, made
server-side with `generate_series` into the event archive's partitions (the retention job's
`ensure_partitions` makes them first, as the workers do). Measured on each, in rounds that
alternate which database goes first (`--rounds`, 3; medians reported):

- submit: 4,000 `POST /runs` over 32 connections (bench/loadgen.py's `post_many`), no worker;
- dispatch: one worker (concurrency 100) drains those 4,000 runs: runs ended per second;
- list: `GET /runs` p99 for the bench user, the first page and a keyset page 90% down;
- replay: `GET /runs/{id}/events` of a finished run whose events only the archive holds (p99).

Goal: each figure of "full" within 15% of "empty".
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import redis

from bench import dispatch
from bench.lib import (
    REDIS_URL,
    latency_ms,
    median,
    parser,
    print_table,
    ratio,
    record,
    run_async,
    wait_until,
)
from bench.loadgen import post_many
from bench.stack import Stack, longrun_stack, run_counts
from shared.config import Settings
from shared.store import Store

DAYS = 30
EVENTS_PER_RUN = 20
# Runs of `user` (or, when `user` is NULL, of 1,000 others and, every tenth, of the bench user),
# created evenly over [$3, $3 + DAYS days), ended a second later.
FILL_RUNS = """INSERT INTO runs (run_id, user_id, agent, input, status, attempt, created_at,
        started_at, finished_at, updated_at, last_seq, output)
    SELECT gen_random_uuid(),
           coalesce($2, CASE WHEN i % 10 = 0 THEN 'bench' ELSE 'u' || (i % 1000) END),
           'ticker', 'x', 'succeeded', 1, t, t, t + interval '1 second', t + interval '1 second',
           20, '{"count": 18}'
    FROM generate_series(1, $1) i,
         LATERAL (SELECT $3::timestamptz + (i - 1) * ($4::float8 / $1) * interval '1 second')
         AS c(t)"""
# The events of the runs created in [$1, $2): start, 18 tokens, done, as the worker encodes them.
FILL_EVENTS = """INSERT INTO run_events (run_id, run_created_at, seq, type, data)
    SELECT r.run_id, r.created_at, s,
           CASE s WHEN 1 THEN 'start' WHEN 20 THEN 'done' ELSE 'token' END,
           convert_to(CASE s
               WHEN 1 THEN '{"seq":1,"type":"start","agent":"ticker","run_id":"' || r.run_id || '"}'
               WHEN 20 THEN '{"seq":20,"type":"done","output":{"count":18}}'
               ELSE '{"seq":' || s || ',"type":"token","text":"' || (s - 1) || '"}' END, 'UTF8')
    FROM (SELECT run_id, created_at FROM runs
          WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at) r,
         generate_series(1, 20) s"""


async def fill(st: Stack, runs: int, own: int) -> dict[str, Any]:
    """`own` runs of the bench user, then `runs` more, and their events; seconds taken."""
    settings = Settings(database_url=st.database_url)
    store = await Store.open(settings, "bench-growth")
    conn = await asyncpg.connect(st.database_url, command_timeout=3600)
    try:
        now = datetime.now(UTC)
        start = now - timedelta(days=DAYS, hours=1)
        async with store.retention.lock() as c:
            assert c is not None
            await store.retention.ensure_partitions(
                c, start, now + timedelta(days=14), settings.event_partition_days
            )
        t0 = time.monotonic()
        span = DAYS * 86400.0
        await conn.execute(FILL_RUNS, own, "bench", start, span)
        if runs:
            await conn.execute(FILL_RUNS, runs, None, start + timedelta(seconds=0.5), span)
        runs_s = time.monotonic() - t0
        day = start
        while day < now:  # a day at a time, in creation order (each partition's index warm)
            await conn.execute(FILL_EVENTS, day, day + timedelta(days=1))
            day += timedelta(days=1)
        events_s = time.monotonic() - t0 - runs_s
        await conn.execute("ANALYZE")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM run_events) AS ev"
        )
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    finally:
        await conn.close()
        await store.close()
    return {
        "runs": counts["runs"],
        "events": counts["ev"],
        "runs_fill_s": round(runs_s, 1),
        "events_fill_s": round(events_s, 1),
        "db_size": size,
    }


async def timed_gets(
    client: httpx.AsyncClient, urls: list[str], headers: dict[str, str]
) -> list[float]:
    out = []
    for url in urls:
        t0 = time.perf_counter()
        async with client.stream("GET", url, headers=headers) as resp:
            async for _ in resp.aiter_bytes():
                pass
            if resp.status_code != 200:
                raise RuntimeError(f"GET {url}: {resp.status_code}")
        out.append(time.perf_counter() - t0)
    return out


async def reads(st: Stack, n: int) -> dict[str, Any]:
    conn = await asyncpg.connect(st.database_url)
    try:
        total = await conn.fetchval("SELECT count(*) FROM runs WHERE user_id = 'bench'")
        mark = await conn.fetchrow(
            "SELECT created_at, run_id FROM runs WHERE user_id = 'bench' "
            "ORDER BY created_at DESC, run_id DESC OFFSET $1 LIMIT 1",
            int(total * 0.9),
        )
        finished = [
            str(r["run_id"])
            for r in await conn.fetch(
                "SELECT run_id FROM runs WHERE user_id = 'bench' AND input = 'x' "
                "ORDER BY random() LIMIT $1",
                n,
            )
        ]
    finally:
        await conn.close()
    from api.runs import make_cursor

    cursor = make_cursor(mark["created_at"], str(mark["run_id"]))
    out: dict[str, Any] = {"user_runs": total}
    async with httpx.AsyncClient(base_url=st.base_url, timeout=30) as client:
        for name, urls in (
            ("list_first", ["/runs?limit=50"] * n),
            ("list_deep", [f"/runs?limit=50&cursor={cursor}"] * n),
            ("replay", [f"/runs/{rid}/events" for rid in finished]),
        ):
            await timed_gets(client, urls[:20], st.auth)  # warm
            out[name] = latency_ms(await timed_gets(client, urls, st.auth))
    return out


async def drain(st: Stack, since: datetime) -> dict[str, Any]:
    """One worker drains what the submit step queued: runs ended per second (Postgres's own
    times of the first start and the last end)."""
    queued = (await run_counts(st.database_url)).get("queued", 0)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        procs = st.start_workers(1, dispatch.CONCURRENCY)
        wait_until(lambda: r.xlen(st.queue) == 0, 600, "queue drained", procs[0], every=0.01)
    finally:
        r.close()
    ok, span = await dispatch.batch_window(st, since)
    for _ in range(100):  # the last ends may still be committing
        if ok >= queued:
            break
        time.sleep(0.05)
        ok, span = await dispatch.batch_window(st, since)
    st.stop_workers()
    return {"n": ok, "drain_s": span, "drain_per_s": ok / span}


async def measure(st: Stack, smoke: bool) -> dict[str, Any]:
    """One round: N submits (no worker), one worker drains those N runs, then the reads."""
    n_submits, n_reads = (300, 50) if smoke else (4000, 300)
    since = datetime.now(UTC)
    out: dict[str, Any] = {}
    auth = st.auth["Authorization"]
    sent = await post_many(f"{st.base_url}/runs", dispatch.BODY, auth, n_submits)
    if sent["errors"]:
        raise RuntimeError(f"submit errors: {sent['errors'][:3]}")
    out["submit"] = {"n": sent["n"], "seconds": sent["seconds"], "rps": sent["per_s"]}
    out["dispatch"] = await drain(st, since)
    out.update(await reads(st, n_reads))
    return out


async def main(smoke: bool, rounds: int) -> dict[str, Any]:
    runs, own = (20_000, 1_000) if smoke else (1_000_000, 1_000)
    result: dict[str, Any] = {"rounds": []}
    async with longrun_stack() as empty, longrun_stack() as full:
        result["empty_fill"] = await fill(empty, 0, own)
        print("empty:", result["empty_fill"], flush=True)
        result["full_fill"] = await fill(full, runs, own)
        print("full:", result["full_fill"], flush=True)
        # Restart both APIs so that they start alike (no cache warmed by the fill's reads).
        for st in (empty, full):
            st.stop()
            st.start_api()
        # Rounds alternate which database goes first: the machine's load drifts.
        for i in range(rounds):
            pair = [("empty", empty), ("full", full)]
            one: dict[str, Any] = {}
            for name, st in pair if i % 2 == 0 else pair[::-1]:
                one[name] = await measure(st, smoke)
                print(f"round {i + 1} {name}:", figures(one[name]), flush=True)
            result["rounds"].append(one)
    summarize(result)
    return result


def figures(m: dict[str, Any]) -> dict[str, float]:
    return {
        "submit req/s": m["submit"]["rps"],
        "dispatch runs/s": m["dispatch"]["drain_per_s"],
        "list p1 p99 ms": m["list_first"]["p99_ms"],
        "list deep p99 ms": m["list_deep"]["p99_ms"],
        "replay p99 ms": m["replay"]["p99_ms"],
    }


def summarize(result: dict[str, Any]) -> None:
    per_round = [(figures(r["empty"]), figures(r["full"])) for r in result["rounds"]]
    e = {k: median(x[0][k] for x in per_round) for k in per_round[0][0]}
    f = {k: median(x[1][k] for x in per_round) for k in per_round[0][0]}
    rows = []
    ok = True
    for name in e:
        r = median(ratio(x[1][name], x[0][name]) for x in per_round)
        higher_better = name.endswith("/s")
        within = r >= 0.85 if higher_better else r <= 1.15
        ok = ok and within
        rows.append([name, e[name], f[name], r, "OK" if within else "MISSED"])
    print_table(
        f"growth: {result['full_fill']['runs']:,} runs / {result['full_fill']['events']:,} events "
        f"vs {result['empty_fill']['runs']:,} / {result['empty_fill']['events']:,}, "
        f"median of {len(per_round)} rounds (ratio: median of the rounds' ratios)",
        ["figure", "empty", "full", "full/empty", "within 15%"],
        rows,
    )
    result["median"] = {"empty": e, "full": f}
    result["goal_met"] = ok


if __name__ == "__main__":
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rounds = 1 if args.smoke else args.rounds
    record("growth", run_async(main(args.smoke, rounds)), smoke=args.smoke)
