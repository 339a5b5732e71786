"""Postgres keeps the truth: events survive Redis forgetting them, and XLEN is the backlog."""

from __future__ import annotations

import asyncio
import time
import uuid

from shared.redis.keys import Keys
from tests.helpers import (
    assert_gapless_ticker,
    queue_backlog,
    read_events,
    submit,
    wait_status,
)
from tests.sse_frames import aparse_lines


async def test_after_redis_is_flushed_the_history_comes_back_from_postgres_with_same_ids(
    client, worker, settings, redis_client
):
    # Given a finished run, read once from Redis
    run_id = await submit(client, agent="ticker", params={"count": 6, "interval_ms": 0})
    _, live = await read_events(client, run_id)
    await wait_status(client, run_id, "succeeded")
    # When Redis forgets every key of the deployment
    keys = Keys.from_settings(settings)
    async for k in redis_client.scan_iter(match=keys.all_pattern()):
        await redis_client.delete(k)
    assert await redis_client.exists(keys.events(run_id)) == 0

    # Then a full replay comes from the archive, byte for byte the same
    _, archived = await read_events(client, run_id)
    assert archived == live
    assert_gapless_ticker(archived, 6)
    # And resuming from the middle gives exactly the rest
    middle = archived[3].id
    _, rest = await read_events(client, run_id, last_event_id=middle)
    assert rest == archived[4:]


async def test_resuming_from_the_terminal_event_answers_204(client, worker):
    run_id = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 0})
    _, events = await read_events(client, run_id)

    status, again = await read_events(client, run_id, last_event_id=events[-1].id)

    assert status == 204
    assert again == []


async def test_xlen_equals_the_backlog_before_and_after_workers_drain_it(
    client, settings, redis_client, worker_factory
):
    keys = Keys.from_settings(settings)
    # Given 12 runs submitted with no worker running
    ids = [
        await submit(client, agent="ticker", params={"count": 1, "interval_ms": 0})
        for _ in range(12)
    ]
    assert await queue_backlog(redis_client, keys) == 12

    # When a worker drains the queue
    await worker_factory()
    for run_id in ids:
        await wait_status(client, run_id, "succeeded")

    # Then every acked entry is deleted: the backlog is zero
    async def drained() -> bool:
        return await queue_backlog(redis_client, keys) == 0

    for _ in range(100):
        if await drained():
            break
        await asyncio.sleep(0.05)
    assert await queue_backlog(redis_client, keys) == 0


async def test_the_event_archive_is_complete_once_a_run_finished(client, worker, store):
    run_id = await submit(client, agent="ticker", params={"count": 300, "interval_ms": 0})
    await wait_status(client, run_id, "succeeded")

    archived = await store.runs.events_after(run_id, 0, 1000)

    assert [e.seq for e in archived] == list(range(1, 303))
    assert archived[-1].type == "done"


async def test_every_event_a_client_sees_is_already_in_postgres(client, worker, store):
    # Given a run streaming tokens
    run_id = await submit(client, agent="ticker", params={"count": 40, "interval_ms": 5})

    # When a client follows it, and looks each event up in Postgres the moment it arrives
    missing = []
    seen = 0
    async with client.stream("GET", f"/runs/{run_id}/events") as resp:
        async for f in aparse_lines(resp.aiter_lines()):
            seen += 1
            seq = int(f.id or 0)
            archived = await store.runs.events_after(run_id, seq - 1, 1)
            if not archived or archived[0].seq != seq or archived[0].data != f.data.encode():
                missing.append(seq)

    # Then Postgres had every one of them, byte for byte, before the client saw it
    assert seen == 42
    assert missing == []


async def test_a_hole_in_the_archive_ends_the_stream_with_an_error_after_bounded_work(
    client, worker, settings, redis_client, store
):
    # Given a finished run that Redis has forgotten and whose archive lost events 1-3 (what
    # a worker killed between its Redis appends and its archive used to leave behind)
    run_id = await submit(client, agent="ticker", params={"count": 6, "interval_ms": 0})
    await wait_status(client, run_id, "succeeded")
    keys = Keys.from_settings(settings)
    await redis_client.delete(keys.events(run_id), keys.run_meta(run_id))
    async with store.db.conn() as c:
        await c.execute("DELETE FROM run_events WHERE run_id = $1 AND seq <= 3", uuid.UUID(run_id))

    # When a client replays it from the start
    t0 = time.monotonic()
    status, got = await asyncio.wait_for(read_events(client, run_id), timeout=10)

    # Then it is told, without an id, that the events are unavailable, and the stream ends
    # within about a second (the server looked again a few times, then stopped)
    assert status == 200
    assert [(g.id, g.event, g.data["error"]) for g in got] == [
        (None, "stream_error", "events_unavailable")
    ]
    assert time.monotonic() - t0 < 5
