"""The hub on per-run sharded pub/sub: no gap and no duplicate when a notice races a
subscriber's catch-up or when the pub/sub connection is killed mid-stream, and waiting on many
distinct runs at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from api.hub import Hub
from api.streams import RunStream
from shared.config import Settings
from shared.models import Event
from shared.redis.hub import Notice, parse_notice
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def hub_name() -> str:
    return f"test-hub-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def hub(settings: Settings, hub_name: str) -> AsyncIterator[Hub]:
    h = Hub(
        aioredis.Redis.from_url(settings.redis_url, client_name=hub_name),
        Keys.from_settings(settings),
    )
    await h.start()
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
def rio(settings: Settings, redis_client: aioredis.Redis) -> RedisIO:
    return RedisIO(redis_client, Keys.from_settings(settings), settings)


def events(first: int, last: int, *, end: bool = False, text: str = "") -> list[Event]:
    out = []
    for seq in range(first, last + 1):
        etype = "done" if end and seq == last else "token"
        body = {"seq": seq, "type": etype, **({"text": text} if text else {})}
        out.append(Event(seq=seq, type=etype, data=json.dumps(body).encode()))
    return out


async def append(rio: RedisIO, run_id: str, first: int, last: int, **kw: object) -> None:
    end = bool(kw.pop("end", False))
    await rio.append(run_id, 0, events(first, last, end=end, **kw), gaps=True, terminal=end)  # type: ignore[arg-type]


async def collect(stream: RunStream, out: list[int]) -> None:
    async for batch in stream.batches(0, False):
        if batch is not None:
            out.extend(e.seq for e in batch)


def test_a_notice_carries_the_events_the_script_added() -> None:
    one, two = b'{"seq":3,"a":"x\\ny"}', b'{"seq":4}'
    parts = [b"3 4 1", b"token", b"%d" % len(one), one, b"done", b"%d" % len(two), two]
    payload = b"\n".join(parts)
    notice = parse_notice("r", payload)
    assert (notice.first, notice.last, notice.closed) == (3, 4, True)
    assert [(e.seq, e.type, e.data) for e in notice.events] == [
        (3, "token", one),
        (4, "done", two),
    ]
    assert parse_notice("r", b"5 9 0").events == []  # too big to carry: read the stream


async def test_the_append_script_announces_only_what_it_added(
    settings: Settings, redis_client: aioredis.Redis, rio: RedisIO
) -> None:
    keys = Keys.from_settings(settings)
    run_id = uuid.uuid4().hex
    ps = redis_client.pubsub()
    await ps.ssubscribe(keys.run_channel(run_id))
    try:
        await append(rio, run_id, 1, 2)
        await append(rio, run_id, 1, 3)  # a retry overlapping what Redis has: only 3 is new
        await append(rio, run_id, 1, 3)  # nothing new: no notice
        await append(rio, run_id, 4, 4, text="x" * 20_000)  # too big to carry
        await append(rio, run_id, 5, 5, end=True)
        got: list[Notice] = []
        while len(got) < 4:
            msg = await ps.get_sharded_message(timeout=5)
            assert msg is not None
            if msg["type"] == "smessage":
                got.append(parse_notice(run_id, msg["data"]))
        assert [(n.first, n.last, n.closed, [e.seq for e in n.events]) for n in got] == [
            (1, 2, False, [1, 2]),
            (3, 3, False, [3]),
            (4, 4, False, []),
            (5, 5, True, [5]),
        ]
        assert await ps.get_sharded_message(timeout=0.2) is None
    finally:
        await ps.aclose()


async def test_a_notice_arriving_between_subscribe_and_catch_up_is_delivered_once(
    hub: Hub, store: Store, rio: RedisIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = uuid.uuid4().hex
    await append(rio, run_id, 1, 3)  # before anyone watches
    stream = RunStream(store, hub, run_id, idle_seconds=30)
    real = hub.events_after
    raced = False

    async def racing(rid: str, after: int, count: int) -> list[Event]:
        nonlocal raced
        if not raced:  # the catch-up's first read: events land (and are announced) just before
            raced = True
            await append(rio, run_id, 4, 6)
            await wait_for(_pending(stream, 6), timeout=5)
        return await real(rid, after, count)

    monkeypatch.setattr(hub, "events_after", racing)
    seqs: list[int] = []
    task = asyncio.create_task(collect(stream, seqs))
    await wait_for(_has(seqs, 6), timeout=5)
    await append(rio, run_id, 7, 8, end=True)
    await asyncio.wait_for(task, 10)
    assert raced
    assert seqs == list(range(1, 9))  # each once, in order
    assert hub.watches == {}


async def test_a_notice_the_watch_has_passed_is_ignored(hub: Hub) -> None:
    run_id = uuid.uuid4().hex
    stream = RunStream(None, hub, run_id, idle_seconds=30)  # type: ignore[arg-type]
    sub = await stream.subscribe(0)
    try:
        hub._notice(Notice(run_id, 1, 3, False, events(1, 3)))
        hub._notice(Notice(run_id, 2, 4, False, events(2, 4)))  # overlaps: only 4 is new
        hub._notice(Notice(run_id, 1, 4, False, events(1, 4)))  # nothing new
        assert [e.seq for e in sub.take()] == [1, 2, 3, 4]
    finally:
        hub.unsubscribe(sub)


async def test_killing_the_pubsub_connection_mid_stream_loses_and_repeats_nothing(
    hub: Hub, hub_name: str, store: Store, rio: RedisIO, redis_client: aioredis.Redis
) -> None:
    run_id = uuid.uuid4().hex
    stream = RunStream(store, hub, run_id, idle_seconds=30)
    seqs: list[int] = []
    task = asyncio.create_task(collect(stream, seqs))
    end = await hub.until_end(run_id, 0)
    await wait_for(_live(hub, run_id), timeout=5)
    await append(rio, run_id, 1, 5)
    await wait_for(_has(seqs, 5), timeout=5)
    # When the hub's pub/sub connection is killed (and only it: other tests share this Redis)
    killed = 0
    for client in await redis_client.client_list(_type="pubsub"):
        if client["name"] == hub_name:
            await redis_client.client_kill_filter(_id=client["id"])
            killed += 1
    assert killed == 1
    # and events are appended (and announced) while it is away, then after it is back
    await append(rio, run_id, 6, 10)
    await wait_for(_resynced(hub), timeout=10)
    await append(rio, run_id, 11, 15, end=True)
    await asyncio.wait_for(task, 10)
    # Then the subscriber got every event exactly once, in order, and the waiter the end
    assert seqs == list(range(1, 16))
    got = await asyncio.wait_for(end, 5)
    assert got is not None
    assert (got.seq, got.terminal) == (15, True)
    hub.forget(run_id, end)


async def test_a_waiter_on_a_run_that_ended_before_its_subscription_hears_of_the_end(
    hub: Hub, rio: RedisIO
) -> None:
    run_id = uuid.uuid4().hex
    await append(rio, run_id, 1, 2, end=True)  # ended after the waiter read Postgres
    end = await hub.until_end(run_id, 0)
    got = await asyncio.wait_for(end, 5)
    assert got is not None
    assert got.seq == 2
    hub.forget(run_id, end)


async def test_waiting_on_many_distinct_runs_scales(
    hub: Hub, hub_name: str, settings: Settings, rio: RedisIO, redis_client: aioredis.Redis
) -> None:
    runs = [uuid.uuid4().hex for _ in range(3000)]
    ended_early = runs[:100]  # ended before their waiters came
    for run_id in ended_early:
        await append(rio, run_id, 1, 1, end=True)
    ends = {run_id: await hub.until_end(run_id, 0) for run_id in runs}
    assert hub.waiters == len(runs)

    async def all_subscribed() -> bool:
        return all(w.ready.done() for w in hub.watches.values())

    await wait_for(all_subscribed, timeout=20)
    # The hub holds one pub/sub connection (and its small reader pool) whatever it watches
    names = [c["name"] for c in await redis_client.client_list()]
    assert names.count(hub_name) <= 3
    # When every other run ends at once
    grouped = RedisIO(redis_client, Keys.from_settings(settings), settings, batched=True)
    await asyncio.gather(*(append(grouped, run_id, 1, 1, end=True) for run_id in runs[100:]))
    # Then every waiter hears of its run's end
    done, pending = await asyncio.wait(ends.values(), timeout=20)
    assert not pending
    assert all(f.result() is not None and f.result().terminal for f in done)  # type: ignore[union-attr]
    for run_id, end in ends.items():
        hub.forget(run_id, end)
    assert hub.watches == {}

    async def unsubscribed() -> bool:
        return not hub._sent

    await wait_for(unsubscribed, timeout=20)


def _has(seqs: list[int], seq: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return seq in seqs

    return check


def _pending(stream: RunStream, seq: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        sub = stream.sub
        return sub is not None and any(e.seq == seq for e in sub.pending)

    return check


def _live(hub: Hub, run_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        watch = hub.watches.get(run_id)
        return watch is not None and watch.ready.done() and not watch.stale

    return check


def _resynced(hub: Hub) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return hub.resyncs > 0

    return check


async def test_a_busy_hub_connection_is_health_checked_only_when_it_has_been_quiet(
    settings: Settings, store: Store, rio: RedisIO
) -> None:
    # Given a hub whose pub/sub connection is health-checked after 50 ms without a reply
    hub = Hub(
        aioredis.Redis.from_url(settings.redis_url, client_name=f"test-hub-{uuid.uuid4().hex[:8]}"),
        Keys.from_settings(settings),
    )
    await hub.start()
    try:
        conn = hub.io._ps.connection
        conn.health_check_interval = 0.05
        pings: list[float] = []
        send = conn.send_command

        async def counted(*args: object, **kw: object) -> None:
            if args and args[0] == "PING":
                pings.append(time.monotonic())
            await send(*args, **kw)

        conn.send_command = counted
        run_id = uuid.uuid4().hex
        stream = RunStream(store, hub, run_id, idle_seconds=30)
        seqs: list[int] = []
        task = asyncio.create_task(collect(stream, seqs))
        await wait_for(_live(hub, run_id), timeout=5)
        # When notices arrive back to back for 0.3 s, then stop
        began, seq = time.monotonic(), 0
        while time.monotonic() < began + 0.3:
            seq += 1
            await append(rio, run_id, seq, seq)
        await append(rio, run_id, seq + 1, seq + 1, end=True)
        await asyncio.wait_for(task, 10)
        busy = len(pings)
        # Then every event arrived, and no health check went out while replies kept coming
        # (one per message, were the quiet time not reset by each reply)
        assert seqs == list(range(1, seq + 2))
        assert seq > 20
        assert busy <= 2, busy
        # And once the connection is quiet, it is checked again
        await wait_for(lambda: _true(len(pings) > busy), timeout=10)
    finally:
        await hub.close()


async def _true(value: bool) -> bool:
    return value
