"""The Postgres connection layer under the store: the pool, its timeouts, and which asyncpg
errors mean "the database is not there right now" (mapped to `Unavailable` here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Self

import asyncpg
import orjson

from shared.config import Settings
from shared.errors import Unavailable

# Errors that mean "the database is not there right now", not "the query is wrong".
PG_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
)


@contextmanager
def _mapped() -> Iterator[None]:
    """The database being away becomes `Unavailable`."""
    try:
        yield
    except PG_DOWN as exc:
        raise Unavailable(f"postgres unavailable: {type(exc).__name__}") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
            format="text",
        )


async def connect(settings: Settings, app_name: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        settings.database_url,
        timeout=settings.pg_acquire_timeout,
        command_timeout=settings.pg_command_timeout,
        server_settings={"application_name": app_name},
    )
    await _init_connection(conn)
    return conn


class StoreBase:
    """All Postgres access. Built with `await Store.open(settings, app_name)`; close with
    `await store.close()`. Every call acquires a pooled connection with a timeout."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    @classmethod
    async def open(cls, settings: Settings, app_name: str) -> Self:
        try:
            pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=settings.pg_pool_min,
                max_size=settings.pg_pool_max,
                command_timeout=settings.pg_command_timeout,
                timeout=settings.pg_acquire_timeout,
                init=_init_connection,
                server_settings={"application_name": app_name},
            )
        except PG_DOWN as exc:
            raise Unavailable(f"postgres unreachable: {exc}") from exc
        return cls(pool, settings)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[asyncpg.Connection]:
        with _mapped():
            async with self.pool.acquire(timeout=self.settings.pg_acquire_timeout) as conn:
                yield conn

    @asynccontextmanager
    async def held(self, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        """`conn()`, or the caller's own connection (a worker's batch lane keeps one: no
        acquire and no reset round trip per statement), with the same error mapping."""
        if conn is None:
            async with self.conn() as c:
                yield c
            return
        with _mapped():
            yield conn

    async def ping(self) -> None:
        async with self.conn() as c:
            await c.fetchval("SELECT 1")
