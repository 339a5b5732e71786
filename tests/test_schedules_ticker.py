"""The ticker on real Postgres and Redis, driven by a fake clock (`now` is a value): each tick
makes exactly one run, whatever number of tickers race and however often a tick is retried;
missed ticks make one run; DST changes tick on the wall clock; a run whose entry Redis refused
is enqueued by the reconciler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared.config import Settings
from shared.cron import parse
from shared.redis.admission import AdmissionIO
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import NewRun, Store
from shared.store.schedules import Made, NewSchedule, Schedule
from worker.reconcile import QUEUED_GRACE, reconcile_once
from worker.schedules import Ticker

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def rio(settings: Settings) -> AsyncIterator[RedisIO]:
    io = RedisIO(create_redis(settings, "test-ticker"), Keys.from_settings(settings), settings)
    await io.ensure_group()
    try:
        yield io
    finally:
        await io.aclose()


async def schedule(
    store: Store, cron: str, zone: str = "UTC", *, at: datetime = T0, user: str = "alice", **run
) -> Schedule:
    """A schedule as `POST /schedules` makes it, its first tick the first after `at`."""
    first = parse(cron, zone, at).after(at)
    template = NewRun(
        user_id=user,
        agent="ticker",
        input=run.pop("input", "scheduled"),
        params=run.pop("params", {"count": 1}),
        metadata={},
        **run,
    )
    return await store.schedules.create(NewSchedule(cron, zone, first, template), max_per_user=1000)


async def start(store: Store, made: list[Made]) -> list[Made]:
    """What a worker does first to the runs made: start them (queued -> running)."""
    await store.db.execute(
        "UPDATE runs SET status = 'running', attempt = 1, started_at = now() "
        "WHERE run_id = ANY($1::uuid[]) AND status = 'queued'",
        [uuid.UUID(m.run_id) for m in made],
    )
    return made


async def made_runs(store: Store, sid: str) -> list[tuple[datetime, str]]:
    rows = await store.db.fetch(
        "SELECT tick_at, run_id FROM schedule_ticks WHERE schedule_id = $1 ORDER BY tick_at",
        uuid.UUID(sid),
    )
    return [(r["tick_at"], str(r["run_id"])) for r in rows]


async def test_each_tick_makes_one_queued_run_with_its_entry_and_nothing_between(
    settings, store, rio
):
    # Given an every-15-minutes schedule
    s = await schedule(store, "*/15 * * * *", params={"count": 3})
    ticker = Ticker(settings, store, rio)

    # When the clock walks 2 hours in 1-minute steps, ticking at each
    for minute in range(1, 121):
        await start(store, await ticker.once(T0 + timedelta(minutes=minute)))

    # Then exactly the 8 ticks made one run each, with an entry in the queue
    made = await made_runs(store, s.schedule_id)
    assert [t for t, _ in made] == [T0 + timedelta(minutes=15 * i) for i in range(1, 9)]
    runs = [await store.runs.get_run(r, "alice") for _, r in made]
    assert all(r is not None and r.status == "running" for r in runs)  # started, as made
    assert all(r is not None and r.params == {"count": 3} and r.agent == "ticker" for r in runs)
    assert {r for _, r in made} <= await rio.group.queued_run_ids()
    now = await store.schedules.get(s.schedule_id, "alice")
    assert now is not None
    assert now.ticks == 8
    assert now.next_tick_at == T0 + timedelta(hours=2, minutes=15)
    assert now.last_tick_at == T0 + timedelta(hours=2)


async def test_the_same_tick_retried_makes_no_second_run(settings, store, rio):
    # Given a tick made once
    s = await schedule(store, "0 * * * *")
    ticker = Ticker(settings, store, rio)
    due = T0 + timedelta(hours=1)
    assert len(await ticker.once(due)) == 1

    # When the same tick comes round again (a ticker that read the schedule before the
    # commit, a restart that replays it: next_tick_at put back by hand here)
    await store.db.execute(
        "UPDATE schedules SET next_tick_at = $2 WHERE schedule_id = $1",
        uuid.UUID(s.schedule_id),
        due,
    )
    again = await ticker.once(due + timedelta(seconds=1))

    # Then the unique key (schedule, tick) refuses it: no run, and the schedule moves on
    assert again == []
    assert len(await made_runs(store, s.schedule_id)) == 1
    moved = await store.schedules.get(s.schedule_id, "alice")
    assert moved is not None
    assert moved.next_tick_at == due + timedelta(hours=1)
    assert moved.ticks == 1


async def test_tickers_racing_on_the_same_due_schedules_make_one_run_per_tick(settings, store, rio):
    # Given 30 schedules due at once, and four tickers, each with its own connections
    ids = [(await schedule(store, "0 * * * *", input=f"s{i}")).schedule_id for i in range(30)]
    stores = [await Store.open(settings, f"ticker-{i}") for i in range(4)]
    try:
        tickers = [Ticker(settings, st, rio) for st in stores]
        due = T0 + timedelta(hours=1, seconds=5)

        # When they all tick at the same instant, three times over
        rounds = [await asyncio.gather(*(t.once(due) for t in tickers)) for _ in range(3)]
    finally:
        for st in stores:
            await st.close()

    # Then each schedule made exactly one run, whichever ticker made it
    made = [m for r in rounds for per_ticker in r for m in per_ticker]
    assert sorted(m.schedule_id for m in made) == sorted(ids)
    for sid in ids:
        assert len(await made_runs(store, sid)) == 1
    assert int(await store.db.fetchval("SELECT count(*) FROM runs")) == 30


async def test_missed_ticks_make_one_run_for_the_latest_then_the_cadence_resumes(
    settings, store, rio
):
    # Given an hourly schedule, and every worker down from before its 13:00 tick until 18:30
    s = await schedule(store, "0 * * * *")
    ticker = Ticker(settings, store, rio)

    # When a worker ticks again at 18:30, and on until 20:00
    back = T0 + timedelta(hours=6, minutes=30)
    first = await start(store, await ticker.once(back))
    for minute in range(1, 91):
        await start(store, await ticker.once(back + timedelta(minutes=minute)))

    # Then one run for 18:00 (13:00 to 17:00 skipped, no burst), then 19:00 and 20:00
    assert [m.tick_at for m in first] == [T0 + timedelta(hours=6)]
    ticks = [t for t, _ in await made_runs(store, s.schedule_id)]
    assert ticks == [T0 + timedelta(hours=h) for h in (6, 7, 8)]


async def test_a_daily_schedule_runs_once_a_day_across_both_dst_changes(settings, store, rio):
    # Given 01:30 and 02:30 every day in New York (02:30 is skipped in March, 01:30 repeated
    # in November)
    zone = "America/New_York"
    spring, fall = datetime(2026, 3, 7, 12, tzinfo=UTC), datetime(2026, 10, 31, 12, tzinfo=UTC)
    for begin in (spring, fall):
        a = await schedule(store, "30 1 * * *", zone, at=begin)
        b = await schedule(store, "30 2 * * *", zone, at=begin)
        ticker = Ticker(settings, store, rio)

        # When the clock walks 3 days in 15-minute steps
        for step in range(1, 3 * 24 * 4 + 1):
            await start(store, await ticker.once(begin + timedelta(minutes=15 * step)))

        # Then each ran exactly once a day, at its wall-clock time (or just after a gap)
        for s, hour in ((a, 1), (b, 2)):
            ticks = [t for t, _ in await made_runs(store, s.schedule_id)]
            local = [t.astimezone(ZoneInfo(zone)) for t in ticks]
            assert len({t.date() for t in local}) == len(local) == 3, local
            for t in local:
                if (t.hour, t.minute) != (hour, 30):
                    assert (begin, hour, (t.hour, t.minute)) == (spring, 2, (3, 0))


async def test_a_deleted_schedule_makes_no_more_runs(settings, store, rio):
    s = await schedule(store, "0 * * * *")
    ticker = Ticker(settings, store, rio)
    assert len(await ticker.once(T0 + timedelta(hours=1))) == 1

    assert await store.schedules.delete(s.schedule_id, "alice")
    assert await ticker.once(T0 + timedelta(hours=5)) == []
    assert len(await made_runs(store, s.schedule_id)) == 1


async def test_a_thread_schedule_makes_its_runs_in_that_thread(settings, store, rio):
    s = await schedule(store, "0 * * * *", thread_id="daily")
    (m,) = await Ticker(settings, store, rio).once(T0 + timedelta(hours=1))
    run = await store.runs.get_run(m.run_id, "alice")
    assert run is not None
    assert run.thread_id == "daily"
    assert (await store.schedules.runs(s.schedule_id, "alice", limit=10))[0][1].run_id == m.run_id
    assert await store.schedules.runs(s.schedule_id, "bob", limit=10) == []


async def test_a_run_whose_entry_redis_refused_is_enqueued_by_the_reconciler(settings, store, rio):
    # Given a tick made while Redis refused its entry (a client to a closed port)
    s = await schedule(store, "0 * * * *")
    down = settings.with_(redis_url="redis://127.0.0.1:1/0", redis_connect_timeout=0.5)
    dead = RedisIO(create_redis(down, "test-down"), Keys.from_settings(down), down)
    try:
        (m,) = await Ticker(settings, store, dead).once(T0 + timedelta(hours=1))
    finally:
        await dead.aclose()
    assert m.run_id not in await rio.group.queued_run_ids()
    run = await store.runs.get_run(m.run_id, "alice")
    assert run is not None
    assert run.status == "queued"  # committed: the tick is made, only its entry is missing

    # When the reconciler passes once the run is past its grace
    await asyncio.sleep(QUEUED_GRACE + 0.2)
    fixed = await reconcile_once(settings, store, rio, "test")

    # Then the run has its entry, and the schedule made no second run
    assert fixed == 1
    assert m.run_id in await rio.group.queued_run_ids()
    assert len(await made_runs(store, s.schedule_id)) == 1


async def test_a_schedule_that_no_longer_parses_waits_and_does_not_stall_the_others(
    settings, store, rio
):
    # Given two due schedules, one whose zone has left the tz database since it was made
    broken = await schedule(store, "0 * * * *")
    fine = await schedule(store, "0 * * * *")
    await store.db.execute(
        "UPDATE schedules SET timezone = 'Gone/Away' WHERE schedule_id = $1",
        uuid.UUID(broken.schedule_id),
    )
    now = T0 + timedelta(hours=1)

    # When a ticker passes
    made = await Ticker(settings, store, rio).once(now)

    # Then the sound one made its run, and the broken one is looked at again an hour later
    assert [m.schedule_id for m in made] == [fine.schedule_id]
    later = await store.schedules.get(broken.schedule_id, "alice")
    assert later is not None
    assert later.next_tick_at == now + timedelta(hours=1)
    assert later.ticks == 0


async def test_a_tick_while_the_previous_run_is_still_queued_makes_no_run(settings, store, rio):
    # Given a run made by the 13:00 tick, not started yet (workers saturated, or a busy thread)
    s = await schedule(store, "0 * * * *")
    ticker = Ticker(settings, store, rio)
    (first,) = await ticker.once(T0 + timedelta(hours=1))

    # When 14:00 comes: no second queued run (the tick is decided, and skipped)
    assert await ticker.once(T0 + timedelta(hours=2)) == []
    # and once that run has started, 15:00 makes its run again
    await start(store, [first])
    (third,) = await ticker.once(T0 + timedelta(hours=3))

    ticks = await made_runs(store, s.schedule_id)
    assert ticks == [
        (T0 + timedelta(hours=1), first.run_id),
        (T0 + timedelta(hours=2), "None"),
        (T0 + timedelta(hours=3), third.run_id),
    ]
    now = await store.schedules.get(s.schedule_id, "alice")
    assert now is not None
    assert (now.ticks, now.last_tick_at) == (2, T0 + timedelta(hours=3))


async def test_no_schedule_ticks_while_paused_and_one_run_follows_the_resume(settings, store, rio):
    # Given an hourly schedule, and the kill switch on from before its 13:00 tick
    s = await schedule(store, "0 * * * *")
    ticker = Ticker(settings, store, rio)
    switch = AdmissionIO(create_redis(settings, "test-switch"), Keys.from_settings(settings))
    await switch.set_paused("incident")

    # When the ticker passes at 13:00 and 14:00: nothing is made, the schedule waits
    assert await ticker.once(T0 + timedelta(hours=1)) == []
    assert await ticker.once(T0 + timedelta(hours=2)) == []
    waiting = await store.schedules.get(s.schedule_id, "alice")
    assert waiting is not None
    assert waiting.next_tick_at == T0 + timedelta(hours=1)

    # Then after the resume, one run for the most recent tick (14:00), as after an outage
    await switch.set_paused(None)
    await switch.aclose()
    made = await ticker.once(T0 + timedelta(hours=2, minutes=5))
    assert [m.tick_at for m in made] == [T0 + timedelta(hours=2)]
