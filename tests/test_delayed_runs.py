"""Delayed runs (`start_after` / `start_at`): checked at the edge (a clear 422 that writes
nothing), kept out of the queue stream until due (so `XLEN` is the runnable backlog), counted
apart as `scheduled`, promoted exactly once by whichever worker sees them due, to the second,
and put back or enqueued by the reconciler when Redis lost them (never enqueued early)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from longrun_client import AsyncClient

from api.errors import ApiError
from api.submit.request import parse_rfc3339, start_time
from cli.exits import Failure
from cli.submit import SubmitRequest, body, seconds_of
from shared.config import Settings
from shared.models import QueuedRun, RunStatus
from shared.redis.client import create_redis
from shared.redis.delayed import unix_ms
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import NewRun, Store
from tests.cli_proc import cli_env, longrun
from tests.helpers import queue_backlog, queue_run_ids, wait_status
from worker.delayed import promote_due
from worker.reconcile import reconcile_once

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
YEAR = 365 * 86400.0
TICK = {"agent": "ticker", "params": {"count": 1, "interval_ms": 1}}


# -- the edge's rule, with a fake clock ---------------------------------------------------------


def test_start_after_is_seconds_from_now_and_start_at_an_rfc3339_time_with_its_offset() -> None:
    assert start_time(None, None, NOW, YEAR) is None
    assert start_time(2.5, None, NOW, YEAR) == NOW + timedelta(seconds=2.5)
    assert start_time(None, "2030-06-01T14:00:01+02:00", NOW, YEAR) == NOW + timedelta(seconds=1)
    assert start_time(None, "2030-06-01t12:00:01.123456789z", NOW, YEAR) == NOW + timedelta(
        seconds=1, microseconds=123456
    )
    assert start_time(YEAR, None, NOW, YEAR) == NOW + timedelta(seconds=YEAR)


@pytest.mark.parametrize(
    ("after", "at", "says"),
    [
        (1.0, "2030-06-01T12:00:05Z", "not both"),
        (None, "2030-06-01T12:00:05", "RFC 3339"),  # no offset
        (None, "2030-06-01", "RFC 3339"),
        (None, "20300601T120005Z", "RFC 3339"),  # ISO 8601's basic form is not RFC 3339
        (None, "2030-02-30T12:00:00Z", "RFC 3339"),  # no such day
        (None, "tomorrow", "RFC 3339"),
        (None, "2030-06-01T12:00:00Z", "not in the future"),  # now is not the future
        (None, "2020-01-01T00:00:00Z", "not in the future"),
        (None, "2031-06-02T12:00:00Z", "at most"),
        (YEAR + 1, None, "at most"),
        (float("inf"), None, "at most"),
    ],
)
def test_a_malformed_past_double_or_too_far_start_is_a_422(
    after: float | None, at: str | None, says: str
) -> None:
    with pytest.raises(ApiError) as refused:
        start_time(after, at, NOW, YEAR)
    assert refused.value.status == 422
    assert refused.value.code == "invalid_start"
    assert says in refused.value.detail


def test_rfc3339_parsing_keeps_the_offset() -> None:
    at = parse_rfc3339("2030-06-01 12:00:00-05:30")
    assert at is not None
    assert at.utcoffset() == -timedelta(hours=5, minutes=30)
    assert parse_rfc3339("2030-06-01T12:00:60Z") is None  # a leap second Python cannot hold


# -- the delayed set, with a fake clock ---------------------------------------------------------


@pytest.fixture
async def rio(settings: Settings):
    r = create_redis(settings, "test")
    io = RedisIO(r, Keys.from_settings(settings), settings)
    await io.ensure_group()
    try:
        yield io
    finally:
        await r.aclose()


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def test_a_run_is_taken_only_once_it_is_due_earliest_first_with_its_entry(rio) -> None:
    # Given three runs due at 1 s, 2 s and 3 s (a clock of our own)
    runs = [QueuedRun(f"r{i}", f"user{i}", "low" if i == 2 else "normal") for i in (1, 2, 3)]
    assert await rio.delayed.schedule([(q, at_ms(i * 1000)) for i, q in enumerate(runs, 1)]) == 3
    # When the clock reads 1.999 s, only the first is due; asking again takes nothing more
    first = await rio.delayed.take_due(1999, 100)
    assert [(d.run, d.due_ms) for d in first] == [(runs[0], 1000)]
    assert await rio.delayed.take_due(1999, 100) == []
    # At 3 s the other two come, in order, with their users and priorities
    rest = await rio.delayed.take_due(3000, 100)
    assert [d.run for d in rest] == runs[1:]
    assert await rio.delayed.count() == 0
    assert await rio.r.hlen(rio.keys.delayed_who) == 0


async def test_racing_promoters_enqueue_each_due_run_exactly_once(rio) -> None:
    # Given 300 runs due at once and 200 not yet due
    due = [(QueuedRun(str(uuid.uuid4()), "u"), at_ms(5_000)) for _ in range(300)]
    later = [(QueuedRun(str(uuid.uuid4()), "u"), at_ms(60_000)) for _ in range(200)]
    await rio.delayed.schedule(due + later)
    # When six promoters (three workers' worth, twice) look at the same moment
    taken = await asyncio.gather(*(promote_due(rio, 10_000, limit=40) for _ in range(6)))
    while more := await promote_due(rio, 10_000, limit=40):
        taken.append(more)
    # Then every due run was taken by exactly one, and the queue holds exactly those
    ids = [d.run.run_id for batch in taken for d in batch]
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == {q.run_id for q, _ in due}
    assert await queue_backlog(rio.r, rio.keys) == 300
    assert await rio.delayed.count() == 200


async def test_only_new_keeps_the_time_a_run_already_has(rio) -> None:
    q = QueuedRun("r", "u")
    await rio.delayed.schedule([(q, at_ms(1000))])
    assert await rio.delayed.schedule([(q, at_ms(9000))], only_new=True) == 0
    assert await rio.r.zscore(rio.keys.delayed, "r") == 1000


# -- the API: bad input writes nothing ----------------------------------------------------------


async def _counts(store: Store, rio: RedisIO) -> tuple[int, int, int]:
    async with store.db.conn() as c:
        rows = await c.fetchval("SELECT count(*) FROM runs")
    return int(rows), await queue_backlog(rio.r, rio.keys), await rio.delayed.count()


BAD_BODIES = [
    {"start_after": 5, "start_at": "2099-01-01T00:00:00Z"},
    {"start_at": "2001-01-01T00:00:00Z"},
    {"start_at": "2099-01-01T00:00:00"},
    {"start_at": "next tuesday"},
    {"start_at": 1234},
    {"start_after": 0},
    {"start_after": -3},
    {"start_after": "30"},
    {"start_after": True},
    {"start_after": 10 * YEAR},
    {"start_at": (datetime.now(UTC) + timedelta(days=400)).isoformat()},
    {"start_after": 5, "thread_id": "t1"},
]


async def test_a_bad_delayed_start_is_a_clear_422_that_writes_nothing(client, store, rio) -> None:
    before = await _counts(store, rio)
    for extra in BAD_BODIES:
        for path in ("/runs", "/runs/stream", "/runs/wait"):
            resp = await client.post(path, json={"input": "x", **TICK, **extra})
            assert resp.status_code == 422, (path, extra, resp.text)
            err = resp.json()
            assert err["error"] in ("invalid_start", "invalid_request"), err
            assert "start" in err["detail"], err
    assert await _counts(store, rio) == before


# -- end to end ---------------------------------------------------------------------------------


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


async def test_a_delayed_run_starts_on_time_exactly_once_across_three_workers(
    client, store, rio, worker_factory, settings
) -> None:
    # Given three workers racing for it
    for _ in range(3):
        await worker_factory()
    # When a run is submitted to start after 2 seconds
    sent = datetime.now(UTC)
    resp = await client.post("/runs", json={"input": "x", **TICK, "start_after": 2})
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    run_id = answer["run_id"]
    created = datetime.fromisoformat(answer["created_at"])
    start_at = datetime.fromisoformat(answer["start_at"])
    assert timedelta(seconds=1.9) < start_at - created < timedelta(seconds=2.1)
    # Then it is queued, not in the queue stream, and counted as scheduled, not backlog
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] == "queued"
    assert run["start_at"] == answer["start_at"]
    assert await queue_backlog(rio.r, rio.keys) == 0
    assert (await client.get("/health")).json()["runs_scheduled"] == 1
    assert await _metric(client, "longrun_runs_scheduled") == 1
    assert await _metric(client, "longrun_queue_depth") == 0
    # And it starts between 2 and 3 seconds after the submit was sent, in one attempt
    done = await wait_status(client, run_id, "succeeded", timeout=15)
    started = datetime.fromisoformat(done["started_at"])
    assert start_at <= started
    assert timedelta(seconds=2) <= started - sent <= timedelta(seconds=3), started - sent
    assert done["attempts"] == 1
    assert await rio.delayed.count() == 0
    info = await rio.r.xinfo_stream(rio.keys.queue)
    if "entries-added" in info:  # Redis 7: the queue saw one entry, ever
        assert info["entries-added"] == 1


async def test_a_delayed_run_cancelled_leaves_the_set_and_ends_cancelled(
    client, store, rio, worker
) -> None:
    run_id = (await client.post("/runs", json={"input": "x", **TICK, "start_after": 60})).json()[
        "run_id"
    ]
    assert await rio.delayed.count() == 1
    resp = await client.post(f"/runs/{run_id}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "cancelled"
    assert await rio.delayed.count() == 0
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.CANCELLED


async def test_a_delayed_submit_and_stream_answers_once_the_run_ran(client, worker) -> None:
    # `POST /runs/stream` takes the same fields: the stream waits for the run's start
    body = {"input": "x", **TICK, "start_after": 1, "on_disconnect": "continue"}
    sent = datetime.now(UTC)
    async with client.stream("POST", "/runs/stream", json=body, timeout=15) as resp:
        assert resp.status_code == 200
        text = "".join([chunk async for chunk in resp.aiter_text()])
    assert "event: done" in text
    assert datetime.now(UTC) - sent >= timedelta(seconds=1)


# -- the reconciler -----------------------------------------------------------------------------


async def _delayed_row(store: Store, start_in: float, quiet_for: float = 3600) -> str:
    """A queued delayed run as a submit inserts it, with no Redis entry anywhere (as if Redis
    lost it), its row last touched `quiet_for` seconds ago."""
    start = datetime.now(UTC) + timedelta(seconds=start_in)
    new = NewRun("u", "ticker", "x", {}, {}, start_at=start)
    sub = await store.submits.insert_run(new, max_in_flight=1_000_000)
    async with store.db.conn() as c:
        await c.execute(
            "UPDATE runs SET updated_at = now() - make_interval(secs => $2) WHERE run_id = $1",
            uuid.UUID(sub.run_id),
            quiet_for,
        )
    return sub.run_id


async def _reconcile(settings: Settings, store: Store, rio: RedisIO, *, urgent: bool) -> int:
    await rio.r.delete(rio.keys.reconcile_lock)
    s = settings.with_(lease_seconds=30)
    if urgent:  # one pass with its walk, without the second pass's wait
        from worker.reconcile import _pass

        return await _pass(s, store, rio, "me", True)
    return await reconcile_once(s, store, rio, "me")


async def test_the_reconciler_puts_back_a_delayed_run_redis_lost_and_never_enqueues_it_early(
    settings, store, rio
) -> None:
    # Given a run due in a minute that Redis lost (restarted empty), its row long quiet
    run_id = await _delayed_row(store, start_in=60)
    # When the reconciler passes, counting fewer runs in the set than Postgres has waiting
    assert await _reconcile(settings, store, rio, urgent=False) == 0
    # Then it is back in the set with its time, and not in the queue
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.start_at is not None
    assert await rio.r.zscore(rio.keys.delayed, run_id) == unix_ms(run.start_at)
    assert await queue_backlog(rio.r, rio.keys) == 0
    # And an urgent pass (Redis restarted) adds nothing twice and enqueues nothing
    await rio.delayed.remove(run_id)
    await _reconcile(settings, store, rio, urgent=True)
    await _reconcile(settings, store, rio, urgent=True)
    assert await rio.delayed.count() == 1
    assert await queue_backlog(rio.r, rio.keys) == 0


async def test_a_due_run_found_nowhere_is_enqueued_once(settings, store, rio) -> None:
    # Given a run due ten seconds ago whose promoter died between taking it and enqueuing it
    run_id = await _delayed_row(store, start_in=-10)
    # When the reconciler passes twice
    assert await _reconcile(settings, store, rio, urgent=False) == 1
    assert await _reconcile(settings, store, rio, urgent=False) == 0
    # Then it has exactly one queue entry
    assert await queue_backlog(rio.r, rio.keys) == 1
    assert await rio.delayed.count() == 0
    assert await queue_run_ids(rio.r, rio.keys) == [run_id]


async def test_a_due_run_still_in_the_set_is_left_to_the_promoters(settings, store, rio) -> None:
    run_id = await _delayed_row(store, start_in=-10)
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.start_at is not None
    await rio.delayed.schedule([(QueuedRun(run_id, "u"), run.start_at)])
    assert await _reconcile(settings, store, rio, urgent=False) == 0
    assert await queue_backlog(rio.r, rio.keys) == 0
    (taken,) = await promote_due(rio, unix_ms(datetime.now(UTC)))
    assert taken.run.run_id == run_id
    assert await queue_backlog(rio.r, rio.keys) == 1


async def test_a_claim_before_the_start_does_nothing(store) -> None:
    # An entry that came early (a bug, a clock far off) cannot start the run
    run_id = await _delayed_row(store, start_in=60)
    assert await store.runs.claim(run_id, reclaim=False) is None
    assert await store.batches.claim_many([(run_id, False)]) == [None]
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.QUEUED
    assert run.attempt == 0


# -- clients ------------------------------------------------------------------------------------


def test_the_cli_reads_start_after_as_a_duration() -> None:
    assert seconds_of("30s") == 30
    assert seconds_of("1.5m") == 90
    assert seconds_of("2h") == 7200
    assert seconds_of("1d") == 86400
    assert seconds_of("45") == 45
    for bad in ("", "soon", "0s", "-5", "inf", "nan", "5x"):
        with pytest.raises(Failure):
            seconds_of(bad)
    req = SubmitRequest("hi", start_after="30s", priority="low")
    assert body(req) == {"input": "hi", "start_after": 30.0, "priority": "low"}


async def test_longrun_submit_start_after_queues_a_delayed_run(
    api, api_key, settings, tmp_path: Path, store
) -> None:
    env = cli_env(tmp_path, settings, LONGRUN_URL=api.url, LONGRUN_API_KEY=api_key)
    done = await longrun("submit", "hi", "--agent", "ticker", "--start-after", "90s", env=env)
    assert done.code == 0, done
    run_id = done.out.strip()
    assert "to start at" in done.err
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.start_at is not None
    assert timedelta(seconds=80) < run.start_at - run.created_at < timedelta(seconds=100)
    bad = await longrun("submit", "hi", "--start-at", "yesterday", env=env)
    assert bad.code != 0
    assert "start_at" in bad.err


async def test_the_sdk_takes_start_after_and_an_aware_start_at(api, api_key) -> None:
    async with AsyncClient(api.url, api_key) as lr:
        later = await lr.runs.create("hi", agent="ticker", start_after=60)
        assert later.start_at is not None
        when = datetime.now(UTC) + timedelta(hours=1)
        at = await lr.runs.create("hi", agent="ticker", start_at=when)
        assert at.start_at is not None
        assert datetime.fromisoformat(at.start_at) == when.replace(microsecond=when.microsecond)
        run = await lr.runs.get(at.run_id)
        assert run.status == "queued"
        assert run.start_at == at.start_at
        now = await lr.runs.create("hi", agent="ticker")
        assert now.start_at is None
        with pytest.raises(ValueError, match="timezone"):
            await lr.runs.create("hi", start_at=datetime(2099, 1, 1))  # noqa: DTZ001


# -- the submit paths ---------------------------------------------------------------------------


async def test_a_group_of_submits_queues_the_immediate_ones_and_delays_the_others(
    client, store, rio
) -> None:
    # Given twenty concurrent submits (grouped), every other one delayed
    async def one(i: int) -> httpx.Response:
        extra = {"start_after": 30 + i} if i % 2 else {}
        return await client.post("/runs", json={"input": f"r{i}", **TICK, **extra})

    answers = await asyncio.gather(*(one(i) for i in range(20)))
    assert all(a.status_code == 202 for a in answers)
    # Then the ten immediate ones are in the queue stream and the ten delayed ones in the set
    delayed = {a.json()["run_id"] for a in answers if "start_at" in a.json()}
    assert len(delayed) == 10
    assert await queue_backlog(rio.r, rio.keys) == 10
    assert await rio.delayed.present(sorted(delayed)) == delayed


async def test_a_delayed_submit_redis_refuses_is_a_503_that_leaves_no_row(
    client, store, rio, monkeypatch
) -> None:
    from redis.exceptions import ConnectionError as RedisDown

    from shared.redis.delayed import DelayedIO

    async def down(*_: object, **__: object) -> int:
        raise RedisDown("redis is away")

    before = await _counts(store, rio)
    monkeypatch.setattr(DelayedIO, "schedule", down)
    resp = await client.post("/runs", json={"input": "x", **TICK, "start_after": 30})
    assert resp.status_code == 503, resp.text
    assert await _counts(store, rio) == before


async def test_a_retry_with_the_same_key_replays_the_delayed_run_and_its_start(client, rio) -> None:
    headers = {"Idempotency-Key": "later-1"}
    body = {"input": "x", **TICK, "start_after": 30}
    first = await client.post("/runs", json=body, headers=headers)
    again = await client.post("/runs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["start_at"] == first.json()["start_at"]
    assert await rio.delayed.count() == 1
    # The same key with another start is another body: 422
    other = await client.post("/runs", json={**body, "start_after": 31}, headers=headers)
    assert other.status_code == 422


async def test_longrun_status_and_ops_status_count_scheduled_runs_apart_from_the_backlog(
    api, client, store, rio, settings
) -> None:
    from cli.status import gather, render
    from shared.metrics import as_dict

    await client.post("/runs", json={"input": "x", **TICK, "start_after": 60})
    await client.post("/runs", json={"input": "x", **TICK})
    shown = as_dict(await gather(settings), settings)
    assert (shown["backlog"], shown["scheduled"]) == (1, 1)
    assert "scheduled 1 (delayed, not in the backlog)" in render(shown)
    _, key = await store.users.create_key("ops", operator=True)
    ops = await client.get("/ops/status", headers={"Authorization": f"Bearer {key}"})
    assert ops.status_code == 200
    assert (ops.json()["backlog"], ops.json()["scheduled"]) == (1, 1)
