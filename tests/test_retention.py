"""Retention (issue 18): finished runs and everything of theirs are deleted after their
retention, never before; whole partitions of the event archive are dropped when every run in
them expired, the rest deleted in bounded batches; a run still running, a thread still in use
and a key's own retention keep what they should; the counters of `/metrics` do not go down.
Each pass takes `now` as a value: the job runs at chosen times against real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

import worker.retention
from shared.config import Settings
from shared.store import NewRun, Store
from tests.cli_proc import cli_env, longrun
from tests.helpers import queued_run
from tests.sse_frames import parse_lines
from worker.retention import retention_pass

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
DAY0 = datetime(2026, 10, 1, 9, tzinfo=UTC)


def with_retention(settings: Settings, days: int, **more: Any) -> Settings:
    return settings.with_(retention_days=days, event_partition_days=1, **more)


async def make_run(
    store: Store,
    created: datetime,
    *,
    status: str = "succeeded",
    ran_for: timedelta = HOUR,
    user: str = "u",
    thread: str | None = None,
    retention: int | None = None,
    events: int = 5,
) -> str:
    """A run created at `created`, ended `ran_for` later unless still running, its events
    archived (the last one `done` if it ended), a checkpoint, an idempotency key, a webhook
    delivery and an interrupt."""
    rid = uuid.uuid4()
    ended = status != "running"
    async with store.db.conn() as c:
        await c.execute(
            """INSERT INTO runs (run_id, user_id, thread_id, agent, input, status, attempt,
                   created_at, started_at, finished_at, last_seq, retention_days)
               VALUES ($1, $2, $3, 'ticker', 'x', $4, 1, $5, $5, $6, $7, $8)""",
            rid,
            user,
            thread,
            status,
            created,
            created + ran_for if ended else None,
            events,
            retention,
        )
        await c.execute(
            """INSERT INTO run_events (run_id, run_created_at, seq, type, data)
               SELECT $1, $2, s, CASE WHEN s = $3 AND $4 THEN 'done' ELSE 'token' END,
                      convert_to(json_build_object('seq', s, 'type',
                          CASE WHEN s = $3 AND $4 THEN 'done' ELSE 'token' END,
                          'text', s::text)::text, 'UTF8')
               FROM generate_series(1, $3) s""",
            rid,
            created,
            events,
            ended,
        )
        await c.execute(
            "INSERT INTO run_checkpoints (run_id, step, attempt, state) VALUES ($1, 1, 1, '{}')",
            rid,
        )
        await c.execute(
            "INSERT INTO idempotency_keys (user_id, key, body_hash, run_id, expires_at) "
            "VALUES ($1, $2, '\\x00', $3, $4)",
            user,
            f"k-{rid}",
            rid,
            created + DAY,
        )
        await c.execute(
            "INSERT INTO webhook_deliveries (delivery_id, run_id, event_type, state) "
            "VALUES ($1, $2, 'run.succeeded', 'delivered')",
            f"msg_{rid.hex}",
            rid,
        )
        await c.execute(
            "INSERT INTO run_interrupts (run_id, interrupt_id, key, attempt, has_default) "
            "VALUES ($1, 'i1', 'k1', 1, false)",
            rid,
        )
    return str(rid)


async def rows_of(store: Store, run_id: str) -> dict[str, int]:
    rid = uuid.UUID(run_id)
    out = {}
    for table in (
        "runs",
        "run_events",
        "run_checkpoints",
        "idempotency_keys",
        "webhook_deliveries",
        "run_interrupts",
    ):
        sql = f"SELECT count(*) FROM {table} WHERE run_id = $1"
        out[table] = await store.db.fetchval(sql, rid)
    return out


def kept(rows: dict[str, int], events: int = 5) -> bool:
    return rows == {
        "runs": 1,
        "run_events": events,
        "run_checkpoints": 1,
        "idempotency_keys": 1,
        "webhook_deliveries": 1,
        "run_interrupts": 1,
    }


def gone(rows: dict[str, int]) -> bool:
    return not any(rows.values())


async def partitions(store: Store) -> set[str]:
    async with store.retention.lock() as c:
        assert c is not None
        return {p.name for p in await store.retention.partitions(c)}


async def test_nothing_is_deleted_before_its_time(store: Store, settings: Settings) -> None:
    # Given 10 days of retention, partitions made as the job made them then, two runs that
    # ended on day 0 (one an hour after the other)
    s = with_retention(settings, 10)
    await retention_pass(s, store, DAY0)
    early = await make_run(store, DAY0, ran_for=HOUR)
    late = await make_run(store, DAY0 + 2 * HOUR, ran_for=HOUR)
    # When the job passes until a moment before the first is 10 days old
    for at in (DAY0 + DAY, DAY0 + 5 * DAY, DAY0 + 10 * DAY + HOUR - timedelta(seconds=1)):
        await retention_pass(s, store, at)
        # Then everything of both is still there
        assert kept(await rows_of(store, early)), at
        assert kept(await rows_of(store, late)), at
    # When the first has expired but the second not yet
    await retention_pass(s, store, DAY0 + 10 * DAY + 2 * HOUR)
    # Then the second is whole, and its partition too
    assert kept(await rows_of(store, late))
    assert f"run_events_{DAY0:%Y%m%d}" in await partitions(store)
    # When both have expired
    done = await retention_pass(s, store, DAY0 + 10 * DAY + 4 * HOUR)
    # Then their partition was dropped, and every row of both is gone
    assert done is not None
    assert done.dropped == [f"run_events_{DAY0:%Y%m%d}"]
    assert gone(await rows_of(store, early))
    assert gone(await rows_of(store, late))


async def test_a_run_still_running_when_its_neighbours_expire_keeps_all_its_events(
    store: Store, settings: Settings
) -> None:
    # Given a day's partition with two runs that ended and one still running (for weeks)
    s = with_retention(settings, 2)
    await retention_pass(s, store, DAY0)
    ended = [await make_run(store, DAY0 + i * HOUR) for i in range(2)]
    running = await make_run(store, DAY0 + 3 * HOUR, status="running", events=40)
    # When the job passes long after the others expired
    for at in (DAY0 + 3 * DAY, DAY0 + 5 * DAY, DAY0 + 30 * DAY):
        done = await retention_pass(s, store, at)
        assert done is not None
        # Then its partition stays; the expired runs went by batch, the running one is whole
        assert f"run_events_{DAY0:%Y%m%d}" not in done.dropped
        assert kept(await rows_of(store, running), events=40), at
    assert all([gone(await rows_of(store, r)) for r in ended])
    assert f"run_events_{DAY0:%Y%m%d}" in await partitions(store)
    assert [e.seq for e in await store.runs.events_after(running, 0)] == list(range(1, 41))


async def test_deletes_go_in_bounded_batches(store: Store, settings: Settings) -> None:
    # Given 25 expired runs, and batches of 10
    s = with_retention(settings, 1, retention_batch=10)
    await retention_pass(s, store, DAY0)
    runs = [await make_run(store, DAY0 + i * timedelta(minutes=1)) for i in range(25)]
    now = DAY0 + 30 * DAY
    async with store.retention.lock() as c:
        assert c is not None
        # When one batch runs
        first = await store.retention.delete_batch(c, now, 1, 1, 10)
    # Then it deleted 10 runs, the oldest ended first
    assert first == 10
    left = [r for r in runs if not gone(await rows_of(store, r))]
    assert left == runs[10:]
    # And a pass takes the rest in batches of at most 10
    done = await retention_pass(s, store, now)
    assert done is not None
    assert (done.deleted, done.batches) == (15, 2)


async def test_a_whole_partition_is_dropped_when_every_run_in_it_expired(
    store: Store, settings: Settings
) -> None:
    # Given two days of runs (each day its partition), 3 days of retention
    s = with_retention(settings, 3)
    await retention_pass(s, store, DAY0)
    day0 = [await make_run(store, DAY0 + i * HOUR) for i in range(3)]
    day1 = [await make_run(store, DAY0 + DAY + i * HOUR) for i in range(3)]
    # When the job passes once day 0's runs expired, not day 1's
    done = await retention_pass(s, store, DAY0 + 3 * DAY + 12 * HOUR)
    # Then day 0's partition is dropped (not deleted by row), its runs' rows gone too; day 1's
    # stays (days after it, empty, are dropped too: no run can be created in the past)
    assert done is not None
    assert f"run_events_{DAY0:%Y%m%d}" in done.dropped
    assert f"run_events_{DAY0 + DAY:%Y%m%d}" not in done.dropped
    assert f"run_events_{DAY0:%Y%m%d}" not in await partitions(store)
    assert all([gone(await rows_of(store, r)) for r in day0])
    assert all([kept(await rows_of(store, r)) for r in day1])


async def test_a_key_s_own_retention_overrides_the_deployment_s(
    store: Store, settings: Settings
) -> None:
    # Given runs kept forever by default, a key keeping its runs 2 days, one keeping them
    # forever, and a deployment retention applied to a later pass
    short_key, _ = await store.users.create_key("u", retention_days=2)
    ever_key, _ = await store.users.create_key("u", retention_days=0)
    plain_key, _ = await store.users.create_key("u")
    ids = {}
    for name, key in (("short", short_key), ("ever", ever_key), ("plain", plain_key)):
        new = NewRun("u", "ticker", "x", {}, {}, key_id=key)
        ((rid, _),) = [r for r in await store.submits.insert_runs([new]) if r is not None]
        ids[name] = rid
    # Then each run took its key's retention when submitted
    got = {
        n: await store.db.fetchval(
            "SELECT retention_days FROM runs WHERE run_id = $1", uuid.UUID(r)
        )
        for n, r in ids.items()
    }
    assert got == {"short": 2, "ever": 0, "plain": None}
    async with store.db.conn() as c:
        await c.execute("UPDATE runs SET status = 'succeeded', finished_at = now()")
    now = datetime.now(UTC)
    # When the job passes 10 days later under the default (keep forever)
    await retention_pass(with_retention(settings, 0), store, now + 10 * DAY)
    # Then only the 2-day key's run went
    assert await store.runs.get_run(ids["short"]) is None
    assert await store.runs.get_run(ids["ever"]) is not None
    assert await store.runs.get_run(ids["plain"]) is not None
    # When the deployment keeps runs 5 days
    await retention_pass(with_retention(settings, 5), store, now + 10 * DAY)
    # Then the plain key's run went, the forever key's stays
    assert await store.runs.get_run(ids["plain"]) is None
    assert await store.runs.get_run(ids["ever"]) is not None


async def test_a_thread_is_kept_while_it_has_a_run_not_expired(
    store: Store, settings: Settings
) -> None:
    # Given a thread whose first run ended on day 0 and second on day 6, 3 days of retention
    s = with_retention(settings, 3)
    await retention_pass(s, store, DAY0)
    first = await make_run(store, DAY0, thread="t")
    second = await make_run(store, DAY0 + 6 * DAY, thread="t")
    async with store.db.conn() as c:
        await c.execute(
            "INSERT INTO thread_messages (user_id, thread_id, seq, run_id, role, content) "
            "VALUES ('u', 't', 1, $1, 'user', '\"hi\"')",
            uuid.UUID(first),
        )
    # When the job passes after the first expired, not the second
    await retention_pass(s, store, DAY0 + 8 * DAY)
    # Then the thread is whole: both runs, its messages
    assert kept(await rows_of(store, first))
    assert kept(await rows_of(store, second))
    assert len(await store.threads.thread_messages("u", "t")) == 1
    # When both expired
    await retention_pass(s, store, DAY0 + 20 * DAY)
    # Then the thread is gone
    assert gone(await rows_of(store, first))
    assert gone(await rows_of(store, second))
    assert await store.threads.thread_messages("u", "t") == []


async def test_the_counters_of_metrics_do_not_go_down_when_runs_are_deleted(
    store: Store, settings: Settings
) -> None:
    # Given two runs ended (cancelled) and counted
    for _ in range(2):
        run = await queued_run(store)
        assert await store.runs.cancel_queued(run.run_id, "u") is not None
    before = await store.ops.run_figures()
    # When the job deletes them
    done = await retention_pass(with_retention(settings, 1), store, datetime.now(UTC) + 30 * DAY)
    assert done is not None
    assert done.deleted == 2
    assert await store.db.fetchval("SELECT count(*) FROM runs") == 0
    # Then /metrics' figures are what they were
    assert await store.ops.run_figures() == before


async def test_one_job_at_a_time(store: Store, settings: Settings) -> None:
    # Given a pass in progress (the lock held)
    async with store.retention.lock() as held:
        assert held is not None
        # Then another worker's pass does nothing
        assert await retention_pass(with_retention(settings, 1), store, DAY0) is None
    # And once it ended, the next pass runs
    assert await retention_pass(with_retention(settings, 1), store, DAY0) is not None


async def test_a_kept_run_replays_from_the_archive_after_its_neighbours_partition_drop(
    store: Store, settings: Settings, client: httpx.AsyncClient
) -> None:
    # Given alice's runs of day 0 (expired) and a run of day 4, kept, whose events only the
    # archive holds (Redis has none of them)
    s = with_retention(settings, 3)
    await retention_pass(s, store, DAY0)
    old = [await make_run(store, DAY0 + i * HOUR, user="alice") for i in range(3)]
    kept_run = await make_run(store, DAY0 + 4 * DAY, user="alice", events=12)
    # When the job drops day 0's partition
    done = await retention_pass(s, store, DAY0 + 5 * DAY)
    assert done is not None
    assert f"run_events_{DAY0:%Y%m%d}" in done.dropped
    assert all([gone(await rows_of(store, r)) for r in old])
    # Then the kept run's stream replays whole, from seq 1 to its `done`, and resumes
    resp = await client.get(f"/runs/{kept_run}/events")
    assert resp.status_code == 200
    frames = [f for f in parse_lines(iter(resp.text.splitlines())) if f.id]
    assert [int(f.id or 0) for f in frames] == list(range(1, 13))
    assert frames[-1].event == "done"
    resumed = await client.get(f"/runs/{kept_run}/events", headers={"Last-Event-ID": "9"})
    again = [int(f.id) for f in parse_lines(iter(resumed.text.splitlines())) if f.id]
    assert again == [10, 11, 12]
    # And an expired run is gone for its owner too
    assert (await client.get(f"/runs/{old[0]}")).status_code == 404


async def test_keys_create_takes_the_key_s_retention(
    store: Store, settings: Settings, tmp_path: Any
) -> None:
    # When an operator makes a key keeping its runs 7 days, and gives a bad number
    env = cli_env(tmp_path, settings)
    done = await longrun("keys", "create", "--user", "u", "--retention-days", "7", env=env)
    bad = await longrun("keys", "create", "--user", "u", "--retention-days", "-1", env=env)
    # Then the key has it; the bad one is a usage error that makes no key
    assert done.code == 0, done
    key_id = "_".join(done.out.strip().splitlines()[-1].split("_")[:2])
    days = await store.db.fetchval("SELECT retention_days FROM api_keys WHERE key_id = $1", key_id)
    assert days == 7
    assert bad.code == 5, bad  # usage (cli/exits.py)
    assert "number of days" in bad.err
    assert await store.db.fetchval("SELECT count(*) FROM api_keys") == 1


async def test_a_partition_is_dropped_only_once_no_run_row_points_into_it(
    store: Store, settings: Settings, monkeypatch: Any
) -> None:
    # Given a day's partition of three expired runs, and passes of one batch of one run
    monkeypatch.setattr(worker.retention, "MAX_BATCHES", 1)
    s = with_retention(settings, 1, retention_batch=1)
    await retention_pass(s, store, DAY0)
    runs = [await make_run(store, DAY0 + i * HOUR) for i in range(3)]
    # When a pass deletes the first run
    done = await retention_pass(s, store, DAY0 + 5 * DAY)
    assert done is not None
    # Then the partition stays: the runs still there have every event, the deleted one's
    # events wait for the drop (deleting them by row is what the drop saves)
    assert (done.deleted, f"run_events_{DAY0:%Y%m%d}" in done.dropped) == (1, False)
    first = await rows_of(store, runs[0])
    assert (first["runs"], first["run_checkpoints"], first["run_events"]) == (0, 0, 5)
    assert all([kept(await rows_of(store, r)) for r in runs[1:]])
    # When passes delete the others
    for _ in range(2):
        done = await retention_pass(s, store, DAY0 + 5 * DAY)
    # Then the last one dropped the partition
    assert done is not None
    assert f"run_events_{DAY0:%Y%m%d}" in done.dropped
    assert all([gone(await rows_of(store, r)) for r in runs])
