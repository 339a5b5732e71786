"""Fixtures: a fresh Postgres database and Redis key prefix per test, real servers, cleaned up.

Each test's database is a copy of one migrated once per test session (`CREATE DATABASE ...
TEMPLATE`): a copy costs a third of creating and migrating a database, a hundred milliseconds
less per test. Tests of the migrations themselves migrate databases of their own.

Factories close what they build. The API runs as a real uvicorn server on a free port (so SSE
is exercised over a socket); workers run in-process as asyncio tasks, or as subprocesses for
fault tests (tests/procs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
import uvicorn.server

from api.app import create_app
from shared.config import Settings
from shared.migrate import migrate
from shared.store import Store, connect
from worker.main import Worker

ADMIN_DSN = os.environ.get(
    "LONGRUN_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LONGRUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def create_database(name: str, template: str | None = None) -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        copy = "" if template is None else f' TEMPLATE "{template}"'
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()
    return ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


async def _migrated_template(name: str) -> None:
    dsn = await create_database(name)
    conn = await connect(Settings.from_env({"DATABASE_URL": dsn}), "longrun-test")
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """A database migrated once for the session, which each test's database copies."""
    name = f"longrun_test_tmpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_migrated_template(name))
    try:
        yield name
    finally:
        asyncio.run(drop_database(name))


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_prefix(url: str, prefix: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            await r.delete(key)
    finally:
        await r.aclose()


@pytest.fixture
async def settings(migrated_template: str) -> AsyncIterator[Settings]:
    """Settings pointing at a new database (migrated) and key prefix; both removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    db = f"longrun_test_{tag}"
    prefix = f"lrtest-{tag}"
    dsn = await create_database(db, migrated_template)
    s = Settings.from_env(
        {
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": dsn,
            "LONGRUN_KEY_PREFIX": prefix,
            "LONGRUN_LEASE_SECONDS": "2",
            "LONGRUN_DRAIN_SECONDS": "2",
            "LONGRUN_RECONCILE_SECONDS": "0.5",
            "LONGRUN_SSE_PING_SECONDS": "0.5",
            "LONGRUN_CONCURRENCY": "16",
            "LONGRUN_PG_POOL_MAX": "8",
        }
    )
    try:
        yield s
    finally:
        await delete_prefix(REDIS_URL, prefix)
        await drop_database(db)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    st = await Store.open(settings, "longrun-test")
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield r
    finally:
        await r.aclose()


class _PromptAsyncio:
    """`asyncio` as uvicorn's server loop sees it in tests: its polls (the exit flag every
    0.1 s, the connections while it shuts down, and a fixed 0.1 s pause) every 0.02 s, so a
    stopped server is gone in milliseconds, not 0.2 s: a hundred seconds of the suite."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(min(delay, 0.02), result)


uvicorn.server.asyncio = _PromptAsyncio()  # type: ignore[attr-defined]


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1 in this event loop (the API, or a test's
    own server such as tests/webhook_receiver.py)."""

    def __init__(self, app: Any, port: int, *, lifespan: str = "on") -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan=lifespan,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class ApiServer(Served):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(create_app(settings), self.port)


@pytest.fixture
async def api_factory(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[ApiServer]]]:
    servers: list[ApiServer] = []

    async def make(s: Settings | None = None) -> ApiServer:
        srv = ApiServer(s or settings)
        await srv.start()
        servers.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in servers:
            await srv.stop()


@pytest.fixture
async def api(api_factory: Callable[..., Awaitable[ApiServer]]) -> ApiServer:
    return await api_factory()


@pytest.fixture
async def api_proc(settings: Settings, tmp_path: Any) -> AsyncIterator[Callable[..., Any]]:
    """Starts real `longrun api` processes (JSON logs in tmp_path); stops them afterwards."""
    from tests.test_ops_shutdown import ApiProc, start_api

    procs: list[ApiProc] = []

    async def start(name: str = "api", **env: str) -> ApiProc:
        api = await start_api(settings, tmp_path, name, **env)
        procs.append(api)
        return api

    try:
        yield start
    finally:
        for api in procs:
            if api.proc.returncode is None:
                api.proc.terminate()
                await api.proc.wait()


@pytest.fixture
async def worker_factory(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    workers: list[Worker] = []

    async def make(s: Settings | None = None, **changes: Any) -> Worker:
        w = Worker((s or settings).with_(**changes))
        await w.start()
        workers.append(w)
        return w

    try:
        yield make
    finally:
        for w in workers:
            if not w.stopped.is_set():
                await w.close()


@pytest.fixture
async def worker(worker_factory: Callable[..., Awaitable[Worker]]) -> Worker:
    return await worker_factory()


@pytest.fixture
async def api_key(store: Store) -> str:
    _, key = await store.users.create_key("alice")
    return key


@pytest.fixture
async def client(api: ApiServer, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture
async def bob(api: ApiServer, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second user, for isolation tests."""
    _, key = await store.users.create_key("bob")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture
def secret() -> str:
    """A webhook signing secret, for a key and the receiver that verifies with it."""
    from shared.webhooks.signing import new_secret

    return new_secret()


@pytest.fixture
async def receiver(secret: str) -> AsyncIterator[Any]:
    """A running webhook receiver (tests/webhook_receiver.py) verifying with `secret`."""
    from tests.webhook_receiver import Receiver  # it imports this module's Served

    async with Receiver(secret) as r:
        yield r


# The real Redis Cluster and Sentinel setup (session-scoped, started on first use).
from tests.redis_cluster import redis_cluster, redis_sentinel  # noqa: E402, F401
from tests.redis_replicated import redis_cluster_replicated  # noqa: E402, F401
