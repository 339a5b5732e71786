"""Start longrun for a benchmark: a fresh database, a unique Redis key prefix, `longrun migrate`,
an API key, then the API and worker processes through the real console script. Everything is
removed afterwards (processes stopped, keys deleted, database dropped).

Interface used (ARCHITECTURE.md): `longrun migrate`, `longrun keys create --user U` (the key is
the last stdout line), `longrun api --host H --port P`, `longrun worker --concurrency N`, and the
env knobs REDIS_URL, DATABASE_URL, LONGRUN_KEY_PREFIX, LONGRUN_AGENTS.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bench.lib import (
    REDIS_URL,
    Proc,
    delete_keys,
    free_port,
    longrun_bin,
    scratch_database,
    unique,
    wait_http,
    wait_until,
)

BENCH_AGENTS = "bench=bench.agents:stamp"
# One bench user submits thousands of runs and holds thousands of streams: lift the per-user
# admission limits (their checks still run, so their cost is still measured).
UNLIMITED = {
    "LONGRUN_SUBMIT_RATE_PER_SECOND": "1000000",
    "LONGRUN_SUBMIT_BURST": "1000000",
    "LONGRUN_MAX_RUNS_IN_FLIGHT_PER_USER": "10000000",
    "LONGRUN_MAX_BACKLOG": "10000000",
    "LONGRUN_MAX_SSE_PER_USER": "1000000",
}


@dataclass
class Stack:
    env: dict[str, str]
    key: str
    prefix: str
    database_url: str
    api: Proc | None = None
    api_port: int = 0
    workers: list[Proc] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def queue(self) -> str:
        return f"{self.prefix}:runs"

    def backlog(self, redis_sync: Any) -> int:
        """Queued plus in flight: XLEN of every queue shard's ready and held streams."""
        from shared.config import Settings
        from shared.redis.keys import Keys

        keys = Keys.from_settings(Settings.from_env(self.env))
        return sum(
            int(redis_sync.xlen(keys.shard_queue(i))) + int(redis_sync.xlen(keys.held(i)))
            for i in range(keys.shards)
        )

    def events_key(self, run_id: str) -> str:
        from shared.config import Settings
        from shared.redis.keys import Keys

        return Keys.from_settings(Settings.from_env(self.env)).events(run_id)

    def start_api(self, extra_env: dict[str, str] | None = None) -> Proc:
        self.api_port = free_port()
        self.api = Proc(
            "longrun-api",
            [longrun_bin(), "api", "--host", "127.0.0.1", "--port", str(self.api_port)],
            env={**self.env, **(extra_env or {})},
        ).start()
        wait_http(f"{self.base_url}/health", self.api)
        return self.api

    def start_workers(
        self, n: int, concurrency: int = 32, extra_env: dict[str, str] | None = None
    ) -> list[Proc]:
        procs = [
            Proc(
                f"longrun-worker{i}",
                [longrun_bin(), "worker", "--concurrency", str(concurrency)],
                env={**self.env, "LONGRUN_WORKER_NAME": unique(f"bw{i}"), **(extra_env or {})},
            ).start()
            for i in range(n)
        ]
        self.workers.extend(procs)
        return procs

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop(timeout=30)
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.api is not None:
            self.api.stop()
            self.api = None


def _run_cli(args: list[str], env: dict[str, str]) -> str:
    import os

    res = subprocess.run(
        [longrun_bin(), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"longrun {' '.join(args)} failed ({res.returncode}):\n"
            f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )
    return res.stdout


@contextlib.asynccontextmanager
async def longrun_stack(
    *, api: bool = True, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """A migrated scratch deployment with an API key; the API started when `api`."""
    async with scratch_database() as db:
        prefix = unique("lrbench")
        env = {
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": db,
            "LONGRUN_KEY_PREFIX": prefix,
            "LONGRUN_AGENTS": BENCH_AGENTS,
            "LONGRUN_LOG_JSON": "1",
            **UNLIMITED,
            **(extra_env or {}),
        }
        _run_cli(["migrate"], env)
        key = _run_cli(["keys", "create", "--user", "bench"], env).strip().splitlines()[-1].strip()
        stack = Stack(env=env, key=key, prefix=prefix, database_url=db)
        try:
            if api:
                stack.start_api()
            yield stack
        finally:
            stack.stop()
            await delete_keys(f"{prefix}:*")


async def run_counts(database_url: str) -> dict[str, int]:
    """status -> count of runs, straight from Postgres."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM runs GROUP BY status")
    finally:
        await conn.close()
    return {r["status"]: int(r["n"]) for r in rows}


async def run_window(database_url: str) -> dict[str, Any]:
    """First start and last finish of the finished runs, as Postgres recorded them."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT min(started_at) AS s, max(finished_at) AS f, count(*) AS n FROM runs "
            "WHERE finished_at IS NOT NULL"
        )
    finally:
        await conn.close()
    span = (row["f"] - row["s"]).total_seconds() if row["s"] and row["f"] else float("nan")
    return {"finished": int(row["n"]), "span_s": span}


def wait_drained(stack: Stack, redis_sync: Any, timeout: float, proc: Proc | None = None) -> float:
    """Poll the backlog (every shard's ready + held XLEN) every 5 ms until 0 (entries are
    deleted on ack); monotonic time."""
    wait_until(lambda: stack.backlog(redis_sync) == 0, timeout, "queue drained", proc, every=0.005)
    return time.monotonic()
