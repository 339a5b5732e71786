"""Benchmark: waiters. N clients hold `GET /runs/{id}/wait?timeout=300` on one API process (R
queued runs, no worker), against a Redis of the benchmark's own, so that every command counted
is the API's. Measured, in one run:

- Redis commands (INFO commandstats, less the benchmark's own INFO) and Postgres statements
  (API backends whose last statement started in the window, from pg_stat_activity, and the
  database's xact_commit + xact_rollback) during an idle window, with 0, a few and N waiters:
  the claim is that the N waiters add nothing to the few;
- bytes per waiter: the API's RSS delta over N;
- from each run's cancel (its terminal event published by the API) to all its waiters answered,
  against the cancel request's own round trip in the same run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from typing import Any

import asyncpg
import httpx
import redis

from bench.lib import (
    PG_ADMIN_URL,
    Proc,
    free_port,
    latency_ms,
    parser,
    print_table,
    ratio,
    record,
    rss_bytes,
    run_async,
    wait_until,
)
from bench.memory import settled_rss, submit
from bench.stack import Stack, longrun_stack

PG_FLUSH_SECONDS = 11.0  # a backend's stats reach pg_stat_database within ~10 s of going idle
CONNECTS_AT_ONCE = 200
CANCELS_AT_ONCE = 64  # within the client's connection pool


def private_redis() -> tuple[Proc, str]:
    """A Redis server of our own (no persistence), so that INFO counts only the API."""
    binary = shutil.which("redis-server")
    if binary is None:
        from cli.embedded import redis_server_binary

        binary = str(redis_server_binary())
    port = free_port()
    data = tempfile.mkdtemp(prefix="bench-wait-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data]
    proc = Proc("bench-redis", [*argv, "--appendonly", "no", "--maxclients", "1000"]).start()
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis.from_url(url)
    try:
        wait_until(lambda: _pings(r), 20, "the benchmark's Redis", proc)
    finally:
        r.close()
    return proc, url


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


def redis_calls(url: str) -> int:
    """Commands Redis has served, less INFO (ours)."""
    r = redis.Redis.from_url(url)
    try:
        stats = r.info("commandstats")
    finally:
        r.close()
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def pg_mark(database_url: str) -> tuple[Any, int]:
    """(the server's now, xact_commit + xact_rollback of the run database)."""
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT now() AS t, xact_commit + xact_rollback AS x FROM pg_stat_database "
            "WHERE datname = $1",
            name,
        )
    finally:
        await conn.close()
    return row["t"], int(row["x"])


async def pg_statements_since(database_url: str, since: Any) -> int:
    """Backends of the run database whose last statement started after `since`."""
    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query_start >= $2",
            name,
            since,
        )
    finally:
        await conn.close()
    return int(n)


async def idle_window(st: Stack, redis_url: str, seconds: float, settle: float) -> dict[str, Any]:
    await asyncio.sleep(settle)
    since, x0 = await pg_mark(st.database_url)
    r0 = redis_calls(redis_url)
    await asyncio.sleep(seconds)
    r1 = redis_calls(redis_url)
    statements = await pg_statements_since(st.database_url, since)
    await asyncio.sleep(settle)
    _, x1 = await pg_mark(st.database_url)
    return {
        "seconds": seconds,
        "redis_commands": r1 - r0,
        "pg_backends_active": statements,
        "pg_xacts": x1 - x0,
    }


async def wait_once(port: int, path: str, auth: str, gate: asyncio.Semaphore) -> dict[str, Any]:
    """One raw HTTP/1.1 long poll: its status, its JSON body and when it was answered."""
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n".encode()
        )
        await writer.drain()
    try:
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = json.loads(await reader.readexactly(length)) if length else {}
        return {"status": status, "body": body, "at": time.perf_counter()}
    finally:
        writer.close()


async def health(c: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await c.get("/health")).json())


Waiters = dict[str, list[asyncio.Task[dict[str, Any]]]]  # run id -> its waiters


async def open_waiters(st: Stack, c: httpx.AsyncClient, run_ids: list[str], n: int) -> Waiters:
    """N waiters spread over the runs, once the API has registered them all (/health)."""
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    auth = st.auth["Authorization"]
    before = (await health(c))["waiters"]
    out: Waiters = {}
    for i in range(n):
        rid = run_ids[i % len(run_ids)]
        path = f"/runs/{rid}/wait?timeout=300"
        task = asyncio.create_task(wait_once(st.api_port, path, auth, gate))
        out.setdefault(rid, []).append(task)
    tasks = [t for ts in out.values() for t in ts]
    deadline = time.monotonic() + 120
    while (await health(c))["waiters"] < before + n:
        if time.monotonic() > deadline or any(t.done() for t in tasks):
            raise RuntimeError(f"only {(await health(c))['waiters']} of {n} waiters registered")
        await asyncio.sleep(0.2)
    return out


async def end_runs(c: httpx.AsyncClient, run_ids: list[str], waiters: Waiters) -> dict[str, Any]:
    """Cancel the runs at once (CANCELS_AT_ONCE in flight); per run, the time from its cancel
    being sent to its cancel answered and to the last of its waiters answered."""
    tasks = [t for rid in run_ids for t in waiters.get(rid, [])]
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    gate = asyncio.Semaphore(CANCELS_AT_ONCE)

    async def cancel(run_id: str) -> None:
        async with gate:
            sent[run_id] = time.perf_counter()
            resp = await c.post(f"/runs/{run_id}/cancel")
            answered[run_id] = time.perf_counter()
        if resp.status_code != 202:
            raise RuntimeError(f"cancel answered {resp.status_code}: {resp.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(cancel(r) for r in run_ids))
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    last: dict[str, float] = {}
    bad = 0
    for res in results:
        body = res["body"]
        if res["status"] != 200 or body.get("status") != "cancelled":
            bad += 1
            continue
        rid = body["run_id"]
        last[rid] = max(last.get(rid, 0.0), res["at"])
    return {
        "answered": len(results) - bad,
        "wrong_answers": bad,
        "all_answered_s": max(r["at"] for r in results) - started,
        "cancel_rtt": latency_ms([answered[r] - sent[r] for r in run_ids]),
        "to_last_waiter": latency_ms([last[r] - sent[r] for r in run_ids if r in last]),
    }


async def main(
    smoke: bool, runs_asked: int | None = None, waiters_asked: int | None = None
) -> dict[str, Any]:
    n, runs, few, window = (50, 5, 5, 1.0) if smoke else (10_000, 100, 10, 10.0)
    runs, n = runs_asked or runs, waiters_asked or n
    settle = 0.0 if smoke else PG_FLUSH_SECONDS
    redis_proc, redis_url = private_redis()
    try:
        async with longrun_stack(extra_env={"REDIS_URL": redis_url}) as st:
            assert st.api is not None
            async with httpx.AsyncClient(base_url=st.base_url, headers=st.auth, timeout=60) as c:
                run_ids = [r["run_id"] for r in await submit(st, runs, {"count": 1})]
                quiet = await idle_window(st, redis_url, window, settle)
                waiters = await open_waiters(st, c, run_ids[:few], few)
                with_few = await idle_window(st, redis_url, window, settle)
                rss_before = settled_rss(st.api.pid, 2.0)
                t0 = time.perf_counter()
                for rid, tasks in (await open_waiters(st, c, run_ids, n)).items():
                    waiters.setdefault(rid, []).extend(tasks)
                register_s = time.perf_counter() - t0
                rss_after = settled_rss(st.api.pid, 2.0)
                with_many = await idle_window(st, redis_url, window, settle)
                one = await end_runs(c, run_ids[:1], waiters)
                ended = await end_runs(c, run_ids[1:], waiters)
                rss_end = rss_bytes(st.api.pid)
    finally:
        redis_proc.stop()
    per_waiter = (rss_after - rss_before) / n
    windows = {"0 waiters": quiet, f"{few} waiters": with_few, f"{n} waiters": with_many}
    print_table(
        f"wait: an idle {window:g} s window on one API process ({runs} queued runs, no worker)",
        ["waiters", "Redis commands", "Postgres backends active", "Postgres xacts"],
        [
            [k, w["redis_commands"], w["pg_backends_active"], w["pg_xacts"]]
            for k, w in windows.items()
        ],
    )
    print_table(
        f"wait: {n} waiters over {runs} runs",
        [
            "all registered in s",
            "RSS before MB",
            "RSS with waiters MB",
            "bytes per waiter",
            "RSS after answers MB",
        ],
        [[register_s, rss_before / 2**20, rss_after / 2**20, per_waiter, rss_end / 2**20]],
    )
    per_run = len(waiters[run_ids[0]])
    print_table(
        f"wait: one run cancelled ({per_run} waiters), then the other {runs - 1} at once; "
        "per run, from its cancel sent",
        ["", "p50 ms", "p99 ms", "max ms"],
        [
            ["one run: cancel answered (baseline)", *_ms(one["cancel_rtt"])],
            ["one run: its last waiter answered", *_ms(one["to_last_waiter"])],
            [f"{runs - 1} runs: cancel answered (baseline)", *_ms(ended["cancel_rtt"])],
            [f"{runs - 1} runs: the last waiter of each answered", *_ms(ended["to_last_waiter"])],
        ],
    )
    print(
        f"{ended['answered']} waiters of {runs - 1} runs answered {ended['all_answered_s']:.2f} s "
        f"after the first cancel; wrong answers: {ended['wrong_answers'] + one['wrong_answers']}"
    )
    return {
        "waiters": n + few,
        "runs": runs,
        "windows": windows,
        "register_s": register_s,
        "rss_before_mb": rss_before / 2**20,
        "rss_with_waiters_mb": rss_after / 2**20,
        "bytes_per_waiter": per_waiter,
        "one_run": one,
        "ended": ended,
        "last_waiter_p50_ratio": ratio(
            ended["to_last_waiter"]["p50_ms"], ended["cancel_rtt"]["p50_ms"]
        ),
    }


def _ms(lat: dict[str, float]) -> list[float]:
    return [lat["p50_ms"], lat["p99_ms"], lat["max_ms"]]


if __name__ == "__main__":
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, help="spread the waiters over this many runs (100)")
    p.add_argument("--waiters", type=int, help="how many waiters (10,000)")
    args = p.parse_args()
    record("wait", run_async(main(args.smoke, args.runs, args.waiters)), smoke=args.smoke)
