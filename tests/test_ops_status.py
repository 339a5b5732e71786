"""`longrun status` and `longrun dlq`, run as the real console command against real Redis and
Postgres: output and exit codes for a healthy, a stalled and a degraded system, and a dead
letter retried to success."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from shared.config import Settings
from shared.metrics import (
    GroupInfo,
    RedisFigures,
    WorkerView,
    parse_group,
    parse_workers,
    problems,
)
from shared.redis.group import GroupIO
from shared.redis.keys import Keys
from tests.helpers import assert_gapless_ticker, read_events, submit, wait_for, wait_status
from tests.procs import ROOT, settings_env


async def longrun(settings: Settings, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        env=settings_env(settings),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def status_json(settings: Settings) -> tuple[int, dict[str, Any]]:
    code, out = await longrun(settings, "status", "--json")
    return code, json.loads(out)


async def dead_letter_a_run(
    client: Any, redis_client: Any, keys: Keys, worker_factory: Any
) -> tuple[str, Any]:
    """A run delivered once to a consumer that vanished, then re-claimed past max_attempts=1 by
    a new live worker: it is dead-lettered and fails with `max_attempts`. Returns the run id
    and the worker (stop it before dead-lettering another run)."""
    run_id = await submit(client, agent="ticker", params={"count": 3, "interval_ms": 1})
    group = GroupIO(redis_client, keys)
    await group.ensure()
    got, _ = await group.pull(0, "ghost", 1)
    assert got, "the run's entry was in the queue"
    w = await worker_factory(max_attempts=1, lease_seconds=0.5)
    body = await wait_status(client, run_id, "failed")
    assert body["error"]["code"] == "max_attempts"
    return run_id, w


async def test_a_healthy_system_exits_0_and_shows_its_workers(settings, client, worker):
    # Given a live worker that has finished a run
    run_id = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 1})
    await wait_status(client, run_id, "succeeded")
    # When an operator asks for the status
    code, s = await status_json(settings)
    # Then all is well, and the worker is listed with its slots
    assert code == 0, s
    assert s["problems"] == []
    assert s["backlog"] == 0
    assert s["workers_alive"] == 1
    assert s["workers"][0]["name"] == worker.name
    assert s["workers"][0]["concurrency"] == settings.concurrency
    assert s["workers"][0]["last_heartbeat_age_seconds"] < settings.lease_seconds
    assert s["dead_letters"] == 0
    # And the text form says so too
    code, text = await longrun(settings, "status")
    assert code == 0
    assert "workers alive: 1" in text
    assert worker.name in text
    assert text.rstrip().endswith("OK")


async def test_queued_runs_with_no_live_worker_is_a_stalled_system(settings, client):
    # Given runs submitted while no worker runs
    for _ in range(3):
        await submit(client, agent="ticker")
    # When an operator asks for the status
    code, s = await status_json(settings)
    # Then it exits non-zero and names the stall
    assert code == 1
    assert s["backlog"] == 3
    assert s["waiting"] == 3
    assert s["workers_alive"] == 0
    assert s["oldest_waiting_age_seconds"] is not None
    assert any(p.startswith("stalled") for p in s["problems"]), s["problems"]
    code, text = await longrun(settings, "status")
    assert code == 1
    assert "PROBLEM: stalled" in text


async def test_new_dead_letters_degrade_the_status_until_acknowledged(
    settings, client, redis_client, worker_factory
):
    keys = Keys.from_settings(settings)
    # Given a dead-lettered run
    run_id, first = await dead_letter_a_run(client, redis_client, keys, worker_factory)
    # When an operator asks for the status
    code, s = await status_json(settings)
    # Then it is degraded, with the dead letter counted as new
    assert code == 1, s
    assert s["dead_letters"] == 1
    assert s["dead_letters_unacknowledged"] == 1
    assert any(p.startswith("degraded") for p in s["problems"]), s["problems"]
    # And `dlq list` shows it with its run's status
    code, out = await longrun(settings, "dlq", "list", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["run_id"] == run_id
    assert row["run_status"] == "failed"
    assert row["reason"] == "max_attempts"
    # When the operator acknowledges it
    code, _ = await longrun(settings, "dlq", "ack")
    assert code == 0
    # Then the status is healthy again while the dead letter is still there
    code, s = await status_json(settings)
    assert code == 0, s
    assert s["dead_letters"] == 1
    assert s["dead_letters_unacknowledged"] == 0
    # And a newer dead letter degrades it again
    await first.close()
    await dead_letter_a_run(client, redis_client, keys, worker_factory)
    code, s = await status_json(settings)
    assert code == 1
    assert s["dead_letters_unacknowledged"] == 1
    assert await redis_client.get(keys.dlq_watermark)


async def test_dlq_retry_runs_a_dead_run_again_to_success(
    settings, client, redis_client, worker_factory
):
    keys = Keys.from_settings(settings)
    # Given a dead-lettered, failed run
    run_id, _ = await dead_letter_a_run(client, redis_client, keys, worker_factory)
    # When an operator retries it
    code, out = await longrun(settings, "dlq", "retry", run_id)
    # Then it is queued again, leaves the dead letters, and runs to success
    assert code == 0, out
    assert "requeued" in out
    body = await wait_status(client, run_id, "succeeded")
    assert body["error"] is None
    assert await redis_client.xlen(keys.dead_letters) == 0
    # And its events, replayed from the start, are gapless with one terminal event: `done`
    _, events = await read_events(client, run_id)
    assert events[0].event == "resumed"
    assert_gapless_ticker(events, 3)
    # And a second retry of a run that is no longer failed changes nothing
    code, out = await longrun(settings, "dlq", "retry", run_id)
    assert code == 1
    assert "no matching" in out


async def test_dlq_drop_deletes_the_dead_letter_and_keeps_the_run_failed(
    settings, client, redis_client, worker_factory
):
    keys = Keys.from_settings(settings)
    run_id, _ = await dead_letter_a_run(client, redis_client, keys, worker_factory)
    code, out = await longrun(settings, "dlq", "drop", "--all")
    assert code == 0, out
    assert await redis_client.xlen(keys.dead_letters) == 0
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "failed"
    await wait_for(lambda: _healthy(settings))


async def _healthy(settings: Settings) -> bool:
    code, _ = await status_json(settings)
    return code == 0


def test_group_lag_is_read_where_redis_7_has_it_and_absent_on_6_2() -> None:
    redis7 = [
        {"name": b"other", "pending": 9, "lag": 9, "last-delivered-id": b"5-0"},
        {"name": b"workers", "pending": 2, "lag": 3, "last-delivered-id": b"7-1"},
    ]
    redis62 = [{"name": b"workers", "pending": 2, "last-delivered-id": b"7-1"}]
    unknown = [{"name": b"workers", "pending": 0, "lag": None, "last-delivered-id": b"0-0"}]
    assert parse_group(redis7, "workers") == GroupInfo(2, 3, "7-1", True)
    assert parse_group(redis62, "workers") == GroupInfo(2, None, "7-1", True)
    assert parse_group(unknown, "workers").lag is None
    assert parse_group([], "workers") == GroupInfo()


def _figures(**changes: Any) -> RedisFigures:
    base: dict[str, Any] = {
        "backlog": 0,
        "group": GroupInfo(exists=True),
        "oldest_waiting_age_seconds": None,
        "workers": [WorkerView("w", True, 0.1, 0, 4)],
        "dead_letters": 0,
        "dead_letters_unacked": 0,
        "newest_dead_letter_age_seconds": None,
        "counters": {},
        "breakers": {},
    }
    return RedisFigures(**{**base, **changes})


def test_problems_name_a_stall_new_dead_letters_and_starved_queues() -> None:
    s = Settings(lease_seconds=30)
    dead_worker = [WorkerView("w", False, 99.0, 0, 4)]
    assert problems(_figures(), s) == []
    assert problems(_figures(backlog=3, workers=dead_worker), s)[0].startswith("stalled")
    # old dead letters an operator acknowledged are not a problem; new ones are
    assert problems(_figures(dead_letters=5), s) == []
    assert problems(_figures(dead_letters=5, dead_letters_unacked=1), s)[0].startswith("degraded")
    # a run waiting past two leases (and a minute) while slots are free
    assert problems(_figures(backlog=1, oldest_waiting_age_seconds=30.0), s) == []
    starved = problems(_figures(backlog=1, oldest_waiting_age_seconds=61.0), s)
    assert starved[0].startswith("starved")
    busy = [WorkerView("w", True, 0.1, 4, 4)]
    assert problems(_figures(backlog=1, oldest_waiting_age_seconds=61.0, workers=busy), s) == []


def test_workers_silent_for_a_lease_are_dead_and_after_an_hour_forgotten() -> None:
    now = 10_000.0
    beats = [("a", now - 1), ("b", now - 40), ("c", now - 4000)]
    infos = [
        {b"in_flight": b"2", b"concurrency": b"8"},
        {b"in_flight": b"5", b"concurrency": b"8"},
        {},
    ]
    ws = parse_workers(beats, infos, now, lease_seconds=30)
    assert [(w.name, w.alive, w.in_flight, w.free_slots) for w in ws] == [
        ("a", True, 2, 6),
        ("b", False, 0, 0),
    ]
