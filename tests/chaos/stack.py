"""A whole deployment for one fault test: a database on the session's private Postgres cluster, a
private Redis, the API and N workers as real subprocesses (`longrun api`, `longrun worker`) with
short leases, an HTTP client, SSE followers and the truth checker, all closed by the fixture
that built it, whatever the test did."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.config import Settings
from shared.redis.keys import Keys
from shared.store import Store
from tests.chaos.followers import Followers
from tests.chaos.servers import PostgresCluster, RedisServer
from tests.chaos.truth import Expect, Truth
from tests.conftest import free_port
from tests.helpers import wait_for
from tests.procs import ApiProc, WorkerProc, start_worker
from tests.redis_cluster import LentTopology

AGENTS = "attempt_chat=tests.agents:attempt_chat"
# A ticker run of 20 tokens lasts about 2 s; an attempt_chat run (two turns of 10 words, one
# tool call) about as long.
TICKER = {"count": 20, "interval_ms": 100}
CHAT = {"words": 10, "delay_ms": 90}

BASE_ENV = {
    "LONGRUN_KEY_PREFIX": "lr",
    "LONGRUN_LEASE_SECONDS": "2",
    "LONGRUN_DRAIN_SECONDS": "1",
    "LONGRUN_RECONCILE_SECONDS": "2",
    "LONGRUN_SSE_PING_SECONDS": "0.5",
    "LONGRUN_CONCURRENCY": "16",
    "LONGRUN_PG_POOL_MAX": "8",
    "LONGRUN_MAX_SSE_PER_USER": "500",
    "LONGRUN_SUBMIT_RATE_PER_SECOND": "1000",
    "LONGRUN_SUBMIT_BURST": "1000",
    "LONGRUN_AGENTS": AGENTS,
}


@dataclass
class Stack:
    cluster: PostgresCluster
    db: str
    redis: RedisServer | LentTopology
    tmp: Path
    settings: Settings
    api: ApiProc
    api_key: str
    client: httpx.AsyncClient
    workers: list[WorkerProc] = field(default_factory=list)
    truth: Truth = field(default_factory=Truth)
    followers: Followers | None = None

    @property
    def keys(self) -> Keys:
        return Keys.from_settings(self.settings)

    @property
    def dsn(self) -> str:
        return self.settings.database_url

    # -- processes ---------------------------------------------------------------------------
    async def add_worker(self, name: str, **changes: Any) -> WorkerProc:
        w = await start_worker(self.settings.with_(**changes), name, self.tmp)
        self.workers.append(w)
        return w

    async def add_workers(self, n: int, prefix: str = "w", **changes: Any) -> list[WorkerProc]:
        return [await self.add_worker(f"{prefix}{i}", **changes) for i in range(n)]

    async def workers_ready(self, timeout: float = 30) -> None:
        """Until every live worker has logged `worker_started` (it is consuming)."""

        async def ready() -> bool:
            live = [w for w in self.workers if w.proc.returncode is None]
            return all('"worker_started"' in w.log() for w in live)

        await wait_for(ready, timeout)

    # -- runs --------------------------------------------------------------------------------
    async def submit(self, agent: str, params: dict[str, Any], expect: str = "succeeded") -> str:
        resp = await self.client.post(
            "/runs", json={"input": "t", "agent": agent, "params": params}
        )
        assert resp.status_code == 202, resp.text
        run_id: str = resp.json()["run_id"]
        count = params.get("count") if agent == "ticker" else None
        self.truth.expect(
            run_id, Expect(agent, status=expect, count=count, tagged=agent == "attempt_chat")
        )
        if self.followers is not None:
            self.followers.follow(run_id)
        return run_id

    async def submit_mix(self, ticker: int, chat: int) -> list[str]:
        """`ticker` ticker runs and `chat` attempt_chat runs, interleaved, each followed."""
        ids = []
        for i in range(max(ticker, chat)):
            if i < ticker:
                ids.append(await self.submit("ticker", TICKER))
            if i < chat:
                ids.append(await self.submit("attempt_chat", CHAT))
        return ids

    async def runs_under_way(self, ticker: int = 13, chat: int = 17, timeout: float = 30) -> None:
        """Until every followed run is about 1.2 s in: a ticker run has sent its 12th token
        (13 events), an attempt_chat run is mid-way through its second turn (17 events)."""
        assert self.followers is not None
        need = {r: ticker if e.agent == "ticker" else chat for r, e in self.truth.runs.items()}
        await self.followers.until(
            lambda fs: all(f.ended or len(f.received) >= need[r] for r, f in fs.items()),
            timeout,
        )

    def follow(self) -> Followers:
        self.followers = Followers(self.api.url, self.api_key)
        return self.followers

    async def check(self, **kw: Any) -> dict[str, int]:
        """The three-way check over every run of the test (see tests/chaos/truth.py)."""
        return await self.truth.settle_and_check(
            dsn=self.dsn,
            redis_url=self.redis.url,
            keys=self.keys,
            api=self.client,
            followers=self.followers,
            worker_logs=[w.log_path for w in self.workers],
            **kw,
        )

    async def close(self) -> None:
        if self.followers is not None:
            await self.followers.close()
        await self.client.aclose()
        for w in self.workers:
            if w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
        await self.api.kill9()


async def build_stack(
    cluster: PostgresCluster,
    tmp: Path,
    *,
    aof: bool = False,
    redis: RedisServer | LentTopology | None = None,
    **env: str,
) -> tuple[Stack, str]:
    """Database, Redis (a private server, or `redis`: a session's cluster or Sentinel setup
    lent to the stack under its own key prefix), settings, API key and the API (no workers
    yet)."""
    await cluster.ensure_up()
    db = f"truth_{uuid.uuid4().hex[:10]}"
    dsn = await cluster.create_database(db)
    if redis is None:
        redis = RedisServer(tmp, aof=aof)
        await redis.start()
    else:
        assert isinstance(redis, LentTopology)
        env = {**env, "LONGRUN_KEY_PREFIX": redis.prefix}
    settings = Settings.from_env({**BASE_ENV, **env, "REDIS_URL": redis.url, "DATABASE_URL": dsn})
    store = await Store.open(settings.with_(pg_pool_min=0, pg_pool_max=1), "truth-test")
    try:
        _, key = await store.users.create_key("alice")
    finally:
        await store.close()
    api = ApiProc(settings, tmp, free_port())
    client = httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    stack = Stack(cluster, db, redis, tmp, settings, api, key, client)
    return stack, db


async def teardown_stack(stack: Stack | None, cluster: PostgresCluster, db: str | None) -> None:
    if stack is not None:
        await stack.close()
        await stack.redis.stop()
    await cluster.ensure_up()
    if db is not None:
        await cluster.drop_database(db)
