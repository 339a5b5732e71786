"""Benchmark 7, paging the runs list (the console's Runs view): a million runs of a thousand
users in a scratch database, then one page of 50 read through `store.runs.list_runs` (what
`GET /runs` and the operators' `GET /ops/runs` run) at the first page and 90% of the way down,
for one user and for the whole deployment, with and without a status filter. The baseline,
measured in the same run, is the same page read with `OFFSET` (what a page number would cost).
Keyset pages should cost the same at any depth; `OFFSET` grows with it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench.lib import parser, print_table, ratio, record, run_async, scratch_database
from shared.config import Settings
from shared.migrate import migrate
from shared.store import Store
from shared.store.rows import RUN_COLUMNS

PAGE = 50
TRIES = 7
FILL = """INSERT INTO runs (run_id, user_id, agent, input, status, attempt, created_at)
    SELECT gen_random_uuid(), 'u' || (i % $2), CASE WHEN i % 10 = 0 THEN 'chat' ELSE 'ticker' END,
           'x', CASE WHEN i % 100 = 0 THEN 'failed' ELSE 'succeeded' END, 1,
           now() - (i || ' ms')::interval
    FROM generate_series(1, $1) i"""
OFFSET_PAGE = f"""SELECT {RUN_COLUMNS} FROM runs
    WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)
    ORDER BY created_at DESC, run_id DESC OFFSET $3 LIMIT {PAGE}"""


async def best_ms(read: Callable[[], Awaitable[Any]]) -> float:
    best = float("inf")
    for _ in range(TRIES):
        t0 = time.perf_counter()
        await read()
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 3)


async def measure(runs: int, users: int) -> dict[str, Any]:
    async with scratch_database() as url:
        conn = await asyncpg.connect(url, command_timeout=1200)
        try:
            await migrate(conn)
            t0 = time.monotonic()
            await conn.execute(FILL, runs, users)
            await conn.execute("ANALYZE runs")
            fill_s = round(time.monotonic() - t0, 1)
        finally:
            await conn.close()
        store = await Store.open(Settings(database_url=url), "bench-paging")
        try:
            return {"runs": runs, "users": users, "fill_s": fill_s, "rows": await _rows(store)}
        finally:
            await store.close()


async def _rows(store: Store) -> list[dict[str, Any]]:
    out = []
    for who, status in (("u7", None), (None, None), (None, "failed")):
        # the runs this listing walks, and the one 90% of the way down it
        total = await store.db.fetchval(
            "SELECT count(*) FROM runs WHERE ($1::text IS NULL OR user_id = $1)"
            " AND ($2::text IS NULL OR status = $2)",
            who,
            status,
        )
        depth = int(total * 0.9)
        mark = await store.db.fetchrow(
            OFFSET_PAGE.replace(f"LIMIT {PAGE}", "LIMIT 1"), who, status, depth
        )
        before = (mark["created_at"], str(mark["run_id"]))
        kw: dict[str, Any] = {"limit": PAGE, "status": status}

        async def first(kw: dict[str, Any] = kw, who: str | None = who) -> Any:
            return await store.runs.list_runs(who, **kw)

        async def deep(kw: dict[str, Any] = kw, who: str | None = who, before: Any = before) -> Any:
            return await store.runs.list_runs(who, before=before, **kw)

        async def offset(who: str | None = who, status: str | None = status, d: int = depth) -> Any:
            return await store.db.fetch(OFFSET_PAGE, who, status, d)

        row = {
            "listing": f"{'user ' + who if who else 'all users'}{', failed' if status else ''}",
            "walked": total,
            "keyset_first_ms": await best_ms(first),
            "keyset_deep_ms": await best_ms(deep),
            "offset_deep_ms": await best_ms(offset),
        }
        row["deep_vs_first"] = ratio(row["keyset_deep_ms"], row["keyset_first_ms"])
        row["offset_vs_keyset_deep"] = ratio(row["offset_deep_ms"], row["keyset_deep_ms"])
        out.append(row)
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    runs, users = (2_000, 20) if args.smoke else (1_000_000, 1_000)
    result = run_async(measure(runs, users))
    print(f"\n{runs:,} runs of {users:,} users, filled in {result['fill_s']} s")
    print_table(
        f"one page of {PAGE}, 90% of the way down (best of {TRIES})",
        [
            "listing",
            "walked",
            "keyset p1 ms",
            "keyset deep ms",
            "OFFSET deep ms",
            "deep/p1",
            "OFFSET/keyset",
        ],
        [
            [
                r["listing"],
                r["walked"],
                r["keyset_first_ms"],
                r["keyset_deep_ms"],
                r["offset_deep_ms"],
                r["deep_vs_first"],
                r["offset_vs_keyset_deep"],
            ]
            for r in result["rows"]
        ],
    )
    record("paging", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
