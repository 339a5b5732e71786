"""The Postgres connection layer under the repositories: the pool, its timeouts, the codecs,
and which asyncpg errors mean "the database is not there right now" (mapped to `Unavailable`
here, for pooled connections and for connections a caller holds alike)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import orjson

from shared.config import Settings
from shared.errors import Unavailable

# A session connection's polite close; past it, the socket is cut (Postgres ends the session).
SESSION_CLOSE_SECONDS = 5.0

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


# A statement Postgres rolled back to break a deadlock (or a serialization conflict) with a
# concurrent one: workers' batched statements lock `runs` rows of many runs at once, and a burst
# of re-claims (a Redis failover re-delivering many entries at once) can cross two of them.
# Nothing was written, so it is retried like an outage rather than failing the run.
PG_ROLLED_BACK: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


@contextmanager
def _mapped() -> Iterator[None]:
    """The database being away, or a statement it rolled back to break a deadlock, becomes
    `Unavailable` (the caller retries)."""
    try:
        yield
    except PG_DOWN as exc:
        raise Unavailable(f"postgres unavailable: {type(exc).__name__}") from exc
    except PG_ROLLED_BACK as exc:
        raise Unavailable(f"postgres rolled back: {type(exc).__name__}") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
            format="text",
        )


async def connect(
    settings: Settings, app_name: str, server_settings: dict[str, str] | None = None
) -> asyncpg.Connection:
    """One connection outside the pool (migrations, the schema check at start-up, a session of
    its own: `Database.session`, `Database.dedicated`)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        settings.database_url,
        timeout=settings.pg_acquire_timeout,
        command_timeout=settings.pg_command_timeout,
        server_settings={"application_name": app_name, **(server_settings or {})},
    )
    await _init_connection(conn)
    return conn


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a pooled connection goes back with: its session as it is. asyncpg's default reset
    (`RESET ALL`, `UNLISTEN *`, advisory locks released...) is a round trip on every release,
    and a release is awaited before the statement's caller goes on: one more round trip on
    every pooled statement (a submit's insert, `GET /runs/{id}`). Pooled work keeps no session
    state: transaction-scoped locks and settings only, and asyncpg still rolls back a
    transaction left open. What needs a session of its own takes `Database.session()`."""


class Database:
    """The pool every repository shares. Every call acquires a pooled connection with a
    timeout; a caller that keeps a connection of its own (a worker's batch lane) takes it with
    `acquire` and hands it to the repositories, which run on it through `held`."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, app_name: str = "longrun") -> None:
        self.pool = pool
        self.settings = settings
        self.app_name = app_name

    @classmethod
    async def open(cls, settings: Settings, app_name: str) -> Database:
        try:
            pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=settings.pg_pool_min,
                max_size=settings.pg_pool_max,
                command_timeout=settings.pg_command_timeout,
                timeout=settings.pg_acquire_timeout,
                init=_init_connection,
                reset=_keep_session,
                server_settings={"application_name": app_name},
            )
        except PG_DOWN as exc:
            raise Unavailable(f"postgres unreachable: {exc}") from exc
        return cls(pool, settings, app_name)

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

    @asynccontextmanager
    async def session(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection outside the pool, closed afterwards, for session state (a session
        advisory lock): whatever the session held ends with it, however the caller left."""
        with _mapped():
            conn = await connect(self.settings, self.app_name)
        try:
            with _mapped():
                yield conn
        finally:
            try:
                await asyncio.wait_for(conn.close(), SESSION_CLOSE_SECONDS)
            except BaseException:
                conn.terminate()
                raise

    async def dedicated(self, server_settings: dict[str, str]) -> asyncpg.Connection:
        """A connection outside the pool, with session settings of its own, for a caller
        that keeps it (a worker's batch lane) and ends it with `discard`."""
        with _mapped():
            return await connect(self.settings, self.app_name, server_settings)

    async def discard(self, conn: asyncpg.Connection) -> None:
        """End a `dedicated` connection (maybe broken: then its socket is cut)."""
        try:
            await asyncio.wait_for(conn.close(), SESSION_CLOSE_SECONDS)
        except Exception:
            conn.terminate()

    async def acquire(self) -> asyncpg.Connection:
        """A pooled connection for the caller to keep (give it back with `release`)."""
        with _mapped():
            conn: asyncpg.Connection = await self.pool.acquire(
                timeout=self.settings.pg_acquire_timeout
            )
        return conn

    async def release(self, conn: asyncpg.Connection) -> None:
        await self.pool.release(conn, timeout=5)

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    # One statement on a pooled connection (its own transaction): the common case.
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.conn() as c:
            rows: list[asyncpg.Record] = await c.fetch(query, *args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.conn() as c:
            row: asyncpg.Record | None = await c.fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.conn() as c:
            return await c.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        """The command's status line (e.g. `UPDATE 1`)."""
        async with self.conn() as c:
            done: str = await c.execute(query, *args)
        return done
