"""The Sentinel client's own pieces (`shared.redis.client.create_redis` builds Sentinel clients
from them): a client that closes its sentinels' clients with it and knows the pools made from
it, a pool that can be told of a failover, and a connection that asks the sentinels for the
primary whenever it connects. `shared.redis.failover` uses them when Sentinel announces a new
primary."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

# How long a primary announced by `+switch-master` is the only one a Sentinel pool connects to,
# unless the sentinels it asks name it sooner (they learn of a switch milliseconds apart).
PIN_SECONDS = 10.0


class PinnedPool(SentinelConnectionPool):  # type: ignore[misc]
    """Sentinel's pool, told of a failover (`pin`, by `shared.redis.failover`). The sentinels
    learn of a switch a few milliseconds apart, and one that has not yet would send a new
    connection back to the old primary (frozen, it accepts the connection and answers it when
    it wakes, still a primary): until a sentinel it asks names the announced primary, or for
    PIN_SECONDS, the pool connects nowhere else."""

    pinned: tuple[str, int] | None = None
    pinned_until = 0.0

    def pin(self, host: str, port: int) -> None:
        self.pinned = (host, port)
        self.pinned_until = time.monotonic() + PIN_SECONDS
        # A connection to another address handed back to the pool is closed (`owns_connection`)
        self.master_address = self.pinned

    async def get_master_address(self) -> Any:
        address = await self.sentinel_manager.discover_master(self.service_name)
        pin = self.pinned if time.monotonic() < self.pinned_until else None
        if pin is not None and (address[0], int(address[1])) != pin:
            raise MasterNotFoundError(
                f"a sentinel still names {address[0]}:{address[1]}, not the announced "
                f"{pin[0]}:{pin[1]}"
            )
        self.pinned = None
        if self.master_address != address:
            self.master_address = address
            await self.disconnect(inuse_connections=False)  # idle ones, as redis-py does
        return address


class _AsksTheSentinels:
    """A Sentinel connection that asks the sentinels for the primary whenever it connects. In
    redis-py 8 a connection closed under a command in flight is opened again by the command's
    retry through `connect_check_health`, which skips the Sentinel lookup of `connect` and goes
    back to the address it had: the old primary, after a failover."""

    connection_pool: Any
    host: str
    port: int

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected and self.connection_pool.is_master:  # type: ignore[attr-defined]
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[misc]

    async def connect_to(self, address: tuple[str, int]) -> None:
        # (redis-py's `connect`, once it has the address: no second lookup)
        self.host, self.port = address
        await super().connect_check_health(  # type: ignore[misc]
            check_health=self.connection_pool.check_connection, retry_socket_connect=False
        )


class SentinelConnection(_AsksTheSentinels, SentinelManagedConnection):  # type: ignore[misc]
    pass


class SentinelSSLConnection(_AsksTheSentinels, SentinelManagedSSLConnection):  # type: ignore[misc]
    pass


class SentinelRedis(aioredis.Redis):  # type: ignore[misc]
    """The primary's client of a Sentinel setup; closing it closes the sentinels' clients too.
    `pools`: its own pool and those `blocking_pool_of` made from it (`shared.redis.failover`
    closes their connections when the primary changes)."""

    sentinel: Sentinel | None = None
    pools: list[Any]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                await s.aclose()
            self.sentinel = None


async def close_connections(pool: Any, keep: tuple[str, int] | None = None) -> int:
    """Close the pool's connections, idle and in use (a call in flight on one fails with a
    ConnectionError), except those to `keep` (host, port). Returns how many were closed."""
    conns = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    gone = [c for c in conns if keep is None or (c.host, int(c.port)) != keep]
    await asyncio.gather(*(c.disconnect() for c in gone), return_exceptions=True)
    return len(gone)


def sentinel_pools(r: Any) -> list[Any] | None:
    """The pools of a Sentinel-backed client made by `create_redis` (its own and those made
    from it), or None for any other client."""
    if isinstance(r, SentinelRedis) and r.sentinel is not None:
        return r.pools
    return None
