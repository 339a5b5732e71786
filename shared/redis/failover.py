"""Sentinel's word that the primary changed, acted on at once (`FailoverWatch`).

redis-py's Sentinel client asks the sentinels for the primary only when it opens a connection.
Connections it already holds stay on the old primary after a failover: those in use wait on a
server that may be hung until their read times out (`LONGRUN_REDIS_TIMEOUT`), and when a
primary frozen past its failover wakes, still a primary until the sentinels demote it, pooled
connections write to it and those writes are dropped with its demotion (a split brain). So a
process listens where Sentinel announces a failover, `+switch-master` on every sentinel's
pub/sub, as go-redis and Lettuce do, and when its service moves it closes every connection of
its clients of that service, those in use too: each call in flight fails (`ConnectionError`,
which the callers ride out), and the next connection asks the sentinels and finds the new
primary. The sentinels learn of a switch milliseconds apart, and one not yet told would name the
old primary: the clients' pools connect to the announced one only until a sentinel names it
(`shared.redis.sentinel.PinnedPool`), and half a second later any connection elsewhere is closed
again. Listeners (`on_switch`) hear of it too: a worker heals what the failover may have lost
(`worker.liveness`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from shared.redis.client import REDIS_ERRORS, Redis
from shared.redis.sentinel import close_connections, sentinel_pools

log = structlog.get_logger("longrun.redis")

CHANNEL = "+switch-master"
RETRY_SECONDS = 1.0  # a sentinel that cannot be reached is tried again this often
READ_SECONDS = 1.0
# After a switch, connections to anywhere but the new primary are closed once more this much
# later: one opened in the moment between a sentinel's answer and the switch's handling.
SWEEP_SECONDS = 0.5


def switched_service(data: bytes | str) -> tuple[str, str] | None:
    """(service, new primary "host:port") from a `+switch-master` message
    ("<service> <old ip> <old port> <new ip> <new port>"), or None if it is not one."""
    text = data.decode() if isinstance(data, bytes) else data
    parts = text.split()
    if len(parts) != 5 or not parts[4].isdigit():
        return None
    return parts[0], f"{parts[3]}:{parts[4]}"


class FailoverWatch:
    """Listens on every sentinel of `clients` (Sentinel-backed clients made by
    `shared.redis.client.create_redis`; others are left alone) for their service's failover."""

    def __init__(self, *clients: Redis) -> None:
        self.on_switch: list[Callable[[], None]] = []
        self.switches = 0
        self._clients = [c for c in clients if sentinel_pools(c) is not None]
        self._last: str | None = None  # the new primary acted on last
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = 0
        self.listening = asyncio.Event()  # every sentinel's subscription was sent

    def start(self) -> FailoverWatch:
        if self._clients:
            sentinel = self._clients[0].sentinel
            for node in sentinel.sentinels:
                self._tasks.append(asyncio.create_task(self._listen(node)))
        return self

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _listen(self, node: Any) -> None:
        """One sentinel's announcements, for as long as the watch runs; reconnects when the
        sentinel goes away (the others still speak)."""
        while True:
            ps = node.pubsub()
            try:
                await ps.subscribe(CHANNEL)
                self._subscribed += 1
                if self._subscribed >= len(self._tasks):
                    self.listening.set()
                while True:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=READ_SECONDS)
                    if msg is not None and msg.get("type") == "message":
                        await self.switched(msg["data"])
            except REDIS_ERRORS:
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                with contextlib.suppress(*REDIS_ERRORS, RuntimeError):
                    await ps.aclose()

    async def switched(self, data: bytes | str) -> bool:
        """Act on one `+switch-master` message: True if it moved a watched service to a primary
        not already acted on (every sentinel announces the same switch)."""
        got = switched_service(data)
        if got is None:
            return False
        service, primary = got
        mine = [c for c in self._clients if c.connection_pool.service_name == service]
        if not mine or primary == self._last:
            return False
        self._last = primary
        self.switches += 1
        log.warning("redis_failover_announced", service=service, primary=primary)
        host, _, port = primary.rpartition(":")
        address = (host, int(port))
        pools = [pool for c in mine for pool in sentinel_pools(c) or ()]
        for pool in pools:
            if hasattr(pool, "pin"):
                pool.pin(*address)  # new connections go to the announced primary only
        for pool in pools:
            await close_connections(pool)
        for listener in self.on_switch:
            listener()
        self._tasks.append(asyncio.create_task(self._sweep(pools, address)))
        return True

    async def _sweep(self, pools: list[Any], address: tuple[str, int]) -> None:
        await asyncio.sleep(SWEEP_SECONDS)
        for pool in pools:
            closed = await close_connections(pool, keep=address)
            if closed:
                log.warning("redis_stale_connections_closed", connections=closed)
