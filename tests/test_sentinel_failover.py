"""Sentinel's failover notices (`shared.redis.failover`) on a real Sentinel setup: an announced
switch closes every connection a process holds to the old primary, a blocked read's among
them, once per switch however many sentinels announce it; and a real failover is heard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from shared.config import Settings
from shared.redis.client import blocking_pool_of, create_redis
from shared.redis.failover import FailoverWatch, switched_service
from tests.helpers import wait_for
from tests.redis_cluster import SENTINEL_SERVICE, LocalSentinel

pytestmark = pytest.mark.timeout(60)

NAME = "lrtest-failover-watch"


async def _ids(primary: Any, cmd: str | None = None) -> set[int]:
    """The ids of this test's connections on the primary (those running `cmd` only)."""
    return {
        int(c["id"])
        for c in await primary.client_list()
        if c.get("name") == NAME and (cmd is None or c.get("cmd") == cmd)
    }


@contextlib.asynccontextmanager
async def _watched(
    settings: Settings, sentinel: LocalSentinel, *, listen: bool
) -> AsyncIterator[tuple[Any, FailoverWatch, list[int]]]:
    """A Sentinel client, its failover watch (listening on the sentinels when `listen`) and the
    switches the watch acted on; meanwhile a read is blocked on a blocking pool of the client
    (the hub's kind)."""
    r = create_redis(settings.with_(redis_url=sentinel.url), NAME)
    reader = blocking_pool_of(r, 2, 1.0)
    watch = FailoverWatch(r).start() if listen else FailoverWatch(r)
    heard: list[int] = []
    watch.on_switch.append(lambda: heard.append(1))
    blocked = asyncio.create_task(reader.xread({"lrtest-failover-none": "$"}, block=30_000))
    try:
        yield r, watch, heard
    finally:
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        await watch.aclose()
        await reader.aclose()
        await r.aclose()


def test_a_switch_message_names_the_service_and_its_new_primary() -> None:
    assert switched_service(b"svc 10.0.0.1 6379 10.0.0.2 6380") == ("svc", "10.0.0.2:6380")
    assert switched_service("svc 10.0.0.1 6379") is None
    assert switched_service("svc 10.0.0.1 6379 10.0.0.2 port") is None


async def test_an_announced_failover_closes_every_connection_to_the_old_primary_even_in_use(
    settings: Settings, redis_sentinel: LocalSentinel
) -> None:
    # Given a Sentinel client with idle connections and a blocking pool whose read is blocked
    port = await redis_sentinel.primary_port()
    primary = redis_sentinel.node(port)
    # (announced as the primary it was: the pool connects only there until a sentinel names it)
    switch = f"{SENTINEL_SERVICE} 127.0.0.1 1 127.0.0.1 {port}"
    async with _watched(settings, redis_sentinel, listen=False) as (r, watch, heard):
        try:
            await asyncio.gather(r.ping(), r.ping(), r.set("lrtest-failover-k", "v"))
            await wait_for(lambda: _ids(primary, "xread"), timeout=5, interval=0.05)
            before = await _ids(primary)
            assert len(before) >= 2

            # When a sentinel announces this service's switch
            assert await watch.switched(switch.encode())

            # Then every one of those connections is closed at once, the blocked read's too
            async def closed() -> bool:
                return not (before & await _ids(primary))

            await wait_for(closed, timeout=2, interval=0.02)
            assert heard == [1]
            # And the same switch announced by the other sentinels is acted on once; another
            # service's is not acted on
            assert not await watch.switched(switch)
            assert not await watch.switched("other 127.0.0.1 1 127.0.0.1 3")
            assert heard == [1]
            # And the client goes on working (its next connection asks the sentinels)
            assert await r.get("lrtest-failover-k") == b"v"
        finally:
            await r.delete("lrtest-failover-k")
            await primary.aclose()


async def test_a_real_failover_is_heard_and_a_blocked_read_moves_to_the_new_primary(
    settings: Settings, redis_sentinel: LocalSentinel
) -> None:
    # Given a watch listening on the three sentinels, and a blocked read (the hub's kind)
    sentinel = redis_sentinel.node(redis_sentinel.sentinel_ports[0])
    old = new = await redis_sentinel.primary_port()
    nodes = {p: redis_sentinel.node(p) for p in redis_sentinel.data_ports}
    async with _watched(settings, redis_sentinel, listen=True) as (_, watch, heard):
        try:
            await asyncio.wait_for(watch.listening.wait(), 10)
            await wait_for(lambda: _ids(nodes[old], "xread"), timeout=5, interval=0.05)
            # (every sentinel knows the replica: after an earlier test's failover they may not
            # yet, and refuse with NOGOODSLAVE)
            await redis_sentinel.until_settled(old)

            # When an operator fails the primary over
            async def failed_over() -> bool:
                try:
                    await sentinel.execute_command("SENTINEL", "FAILOVER", SENTINEL_SERVICE)
                except ResponseError as exc:  # NOGOODSLAVE: the replica not yet seen in sync
                    if "NOGOODSLAVE" not in str(exc):
                        raise
                    return False
                return True

            await wait_for(failed_over, timeout=20, interval=0.5)

            # Then the watch hears it once
            async def switched() -> bool:
                return bool(heard)

            await wait_for(switched, timeout=30, interval=0.05)
            new = await redis_sentinel.primary_port()
            assert new != old
            assert watch.switches == 1

            # And the blocked read goes on on the new primary, not on the old one (redis-py
            # alone reconnects a connection closed under a command to the address it had)
            async def moved() -> bool:
                on_new = await _ids(nodes[new], "xread")
                return bool(on_new) and not await _ids(nodes[old], "xread")

            await wait_for(moved, timeout=10, interval=0.05)
        finally:
            for c in (sentinel, *nodes.values()):
                await c.aclose()
    # (the next test finds a settled setup: the old primary follows the new one)
    if new != old:
        await redis_sentinel.until_settled(new)
        await redis_sentinel._until_replicating(new, old)
