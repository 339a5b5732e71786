"""The live phase of an SSE stream: the hub's bounded per-subscriber buffer, batching, keep-alive
comments, disconnect detection, the stalled-send watchdog, and the shutdown hint."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import redis.asyncio as aioredis

from api import hub as hub_mod
from api import subscription as subscription_mod
from api.hub import Hub
from api.streams import RunStream
from api.subscription import Subscription
from shared.config import Settings
from shared.models import Event
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store
from tests.helpers import submit, wait_for

pytestmark = pytest.mark.timeout(30)

QUEUED = {"input": "x", "agent": "ticker", "params": {"count": 3, "interval_ms": 0}}


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    h = Hub(aioredis.Redis.from_url(settings.redis_url), Keys.from_settings(settings))
    await h.start()
    try:
        yield h
    finally:
        await h.close()


async def append(
    settings: Settings,
    r: aioredis.Redis,
    run_id: str,
    first: int,
    last: int,
    *,
    end: bool = False,
    text: str = "",
) -> None:
    """Events first..last of a run copied to Redis as a worker does (the append script, which
    announces them on the run's channel); the last one `done` when `end`."""
    events = []
    for seq in range(first, last + 1):
        etype = "done" if end and seq == last else "token"
        body = {"seq": seq, "type": etype, **({"text": text} if text else {})}
        events.append(Event(seq=seq, type=etype, data=json.dumps(body).encode()))
    rio = RedisIO(r, Keys.from_settings(settings), settings)
    await rio.append(run_id, 0, events, gaps=True, terminal=end)


async def test_a_subscriber_whose_buffer_overflows_catches_up_from_redis_without_gap(
    hub: Hub,
    store: Store,
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_mod, "QUEUE_SIZE", 4)
    stream = RunStream(store, hub, "r1", idle_seconds=30)
    sub = await stream.subscribe(0)
    batches: list[list[Event]] = []
    reads: list[int] = []
    events_after = hub.events_after

    async def counted(run_id: str, after: int, count: int) -> list[Event]:
        reads.append(after)
        return await events_after(run_id, after, count)

    monkeypatch.setattr(hub, "events_after", counted)

    async def consume() -> None:
        async for batch in stream.batches(0, False):
            assert batch is not None
            batches.append(batch)

    task = asyncio.create_task(consume())
    await append(settings, redis_client, "r1", 1, 2)
    await until(lambda: _seqs(batches) == [1, 2] and sub._waiter is not None)  # live again
    reads.clear()
    # 30 events in one hub read: more than the buffer holds, so the hub marks it behind
    await append(settings, redis_client, "r1", 3, 32, end=True)
    await asyncio.wait_for(task, 10)
    assert _seqs(batches) == list(range(1, 33))
    assert reads  # it re-read from Redis what the hub did not buffer
    assert hub.subscribers == 0
    assert len(batches) < 32  # delivered in batches, not one event per send


async def test_a_live_subscriber_gets_every_event_in_order_in_batches(
    hub: Hub, store: Store, settings: Settings, redis_client: aioredis.Redis
) -> None:
    stream = RunStream(store, hub, "r2", idle_seconds=30)
    await stream.subscribe(0)
    batches: list[list[Event]] = []

    async def consume() -> None:
        async for batch in stream.batches(0, False):
            assert batch is not None
            batches.append(batch)

    task = asyncio.create_task(consume())
    for first in range(1, 100, 10):
        await append(settings, redis_client, "r2", first, first + 9, end=first == 91)
    await asyncio.wait_for(task, 10)
    assert _seqs(batches) == list(range(1, 101))


async def until(pred: Callable[[], bool]) -> None:
    async def check() -> bool:
        return pred()

    await wait_for(check, timeout=5)


def _seqs(batches: list[list[Event]]) -> list[int]:
    return [e.seq for b in batches for e in b]


async def test_a_send_blocked_past_the_timeout_cancels_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(subscription_mod, "SEND_TIMEOUT", 0.05)
    sub = Subscription("r", idle_seconds=30)
    blocked = asyncio.create_task(asyncio.sleep(30))
    sub.task = blocked  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    sub.sending_since = loop.time() - 1
    sub._tick()
    assert sub.stalled
    with contextlib.suppress(asyncio.CancelledError):
        await blocked
    assert blocked.cancelled()
    sub.close()


async def test_an_idle_subscriber_is_woken_for_a_keepalive_and_not_while_events_flow() -> None:
    sub = Subscription("r", idle_seconds=0.05)
    try:
        await asyncio.wait_for(sub.wait(), 2)
        assert sub.idle
        sub.mark_active()
        assert not sub.idle
    finally:
        sub.close()


async def _lines(resp: httpx.Response) -> AsyncIterator[str]:
    async for line in resp.aiter_lines():
        yield line


async def test_an_idle_stream_sends_keepalive_comments(client: httpx.AsyncClient) -> None:
    run_id = await submit(client, **QUEUED)  # no worker: it stays queued, the stream idles
    async with client.stream("GET", f"/runs/{run_id}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-store"
        async for line in _lines(resp):
            if line.startswith(":"):
                break  # the settings fixture pings every 0.5 s


async def test_a_client_leaving_ends_its_stream_and_subscription(api, client) -> None:
    hub = api.server.config.app.state.longrun.hub
    run_id = await submit(client, **QUEUED)
    async with client.stream("GET", f"/runs/{run_id}/events") as resp:
        assert resp.status_code == 200
        await until(lambda: hub.subscribers == 1)
    await until(lambda: hub.subscribers == 0)


async def test_stopping_the_streams_ends_each_with_the_reconnect_hint(api, client) -> None:
    hub = api.server.config.app.state.longrun.hub
    run_id = await submit(client, **QUEUED)
    got: list[str] = []
    async with client.stream("GET", f"/runs/{run_id}/events") as resp:
        await until(lambda: hub.subscribers == 1)
        hub.stop_streams()
        async for line in _lines(resp):
            got.append(line)
    assert "retry: 250" in got
    assert not any(line.startswith("id:") for line in got)
    assert hub.subscribers == 0


def test_a_large_batch_is_sent_in_parts_of_bounded_size() -> None:
    from api.events import PING, SEND_BYTES, _bodies

    big = [Event(seq=i, type="token", data=b'"' + b"x" * 10_000 + b'"') for i in range(1, 41)]
    parts = list(_bodies(big))
    assert b"".join(parts) == b"".join(e.frame for e in big)
    assert len(parts) > 1
    assert all(len(p) < SEND_BYTES + 11_000 for p in parts)
    assert list(_bodies(None)) == [PING]
    assert list(_bodies(big[:1])) == [big[0].frame]


async def test_the_hub_buffer_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_mod, "QUEUE_BYTES", 1000)
    sub = Subscription("r", idle_seconds=30)
    try:
        one = [Event(seq=1, type="token", data=b"x" * 800)]
        Hub._push(sub, one, 0.0, 800)  # an empty buffer takes a read of any size
        assert sub.pending == one
        assert not sub.behind
        Hub._push(sub, [Event(seq=2, type="token", data=b"x" * 800)], 0.0, 800)
        assert sub.behind
        assert [e.seq for e in sub.pending] == [1]
    finally:
        sub.close()


async def test_leases_are_refreshed_until_let_go_then_released_once(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_mod, "LEASE_REFRESH", 0.1)
    monkeypatch.setattr(hub_mod, "CHORE_TICK", 0.02)
    calls: list[str] = []

    async def refresh() -> None:
        calls.append("refresh")

    async def release() -> None:
        calls.append("release")

    lease = hub.hold(refresh, release)
    await until(lambda: calls.count("refresh") >= 2)
    hub.let_go(lease)
    await until(lambda: "release" in calls)
    settled = len(calls)
    await asyncio.sleep(0.3)  # several refresh periods: nothing more may happen
    assert calls[settled - 1 :] == ["release"]
    assert calls.count("release") == 1


async def test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout(
    api, client, api_key, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscription_mod, "SEND_TIMEOUT", 0.3)
    hub = api.server.config.app.state.longrun.hub
    run_id = await submit(client, **QUEUED)
    _reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {api_key}\r\n\r\n".encode()
        )
        await writer.drain()
        await until(lambda: hub.subscribers == 1)
        # ~24 MB of events it never reads: the socket buffers fill and a send blocks
        settings = api.server.config.app.state.longrun.settings
        for first in range(1, 241, 40):
            await append(settings, redis_client, run_id, first, first + 39, text="x" * 100_000)
        # The watchdog cancels the blocked send and the server drops the connection
        await wait_for(_gone(hub), timeout=15)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _gone(hub: Hub) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return hub.subscribers == 0

    return check
