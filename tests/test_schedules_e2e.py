"""A real tick end to end: a schedule made over HTTP, ticked by real `longrun worker` processes
(two, racing), its run executed by one of them. Exactly one run per tick."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.store import Store
from tests.helpers import wait_for
from tests.procs import WorkerProc, start_worker, stop_all

TICK = "0.2"


@pytest.fixture
async def workers(settings: Settings, tmp_path: Path) -> AsyncIterator[list[WorkerProc]]:
    procs = [
        await start_worker(settings, f"w{i}", tmp_path, LONGRUN_SCHEDULE_TICK_SECONDS=TICK)
        for i in range(2)
    ]
    try:
        yield procs
    finally:
        await stop_all(procs)


def ticked(procs: list[WorkerProc]) -> list[dict]:
    """The `schedule_ticked` lines of every worker's log."""
    out = []
    for p in procs:
        for line in p.log().splitlines():
            if '"schedule_ticked"' in line:
                out.append(json.loads(line))
    return out


async def test_a_due_schedule_makes_exactly_one_run_that_a_worker_runs(
    client: httpx.AsyncClient, store: Store, workers: list[WorkerProc]
):
    # Given a yearly schedule whose next tick is now (set here: a real one is a year away)
    resp = await client.post(
        "/schedules",
        json={
            "cron": "0 0 1 1 *",
            "timezone": "UTC",
            "input": "happy new year",
            "agent": "ticker",
            "params": {"count": 2, "interval_ms": 10},
        },
    )
    assert resp.status_code == 201, resp.text
    sid = resp.json()["schedule_id"]
    await store.db.execute(
        "UPDATE schedules SET next_tick_at = now() WHERE schedule_id = $1", uuid.UUID(sid)
    )

    # When two workers tick every 0.2 s: the run is made and run to its end
    async def finished() -> list[dict] | None:
        runs = (await client.get(f"/schedules/{sid}/runs")).json()["runs"]
        return runs if runs and runs[0]["status"] == "succeeded" else None

    (run,) = await wait_for(finished, timeout=30)
    assert run["output"] == {"count": 2}
    assert run["input"] == "happy new year"

    # Then, five tick periods later (a second run would have been made by now: nothing can
    # be awaited for a run that must not happen), still that one run, and the schedule is
    # a year on
    await asyncio.sleep(5 * float(TICK))
    body = (await client.get(f"/schedules/{sid}")).json()
    runs = (await client.get(f"/schedules/{sid}/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [run["run_id"]]
    assert body["runs_made"] == 1
    assert body["next_run_at"].endswith("-01-01T00:00:00+00:00")
    assert [t["run_id"] for t in ticked(workers)] == [run["run_id"]]


async def test_a_seconds_schedule_ticks_once_a_second_across_two_workers_until_deleted(
    api_factory, settings: Settings, store: Store, workers: list[WorkerProc]
):
    # Given an API that admits one-second schedules, and a schedule of every second
    api = await api_factory(settings.with_(schedule_min_interval_seconds=1))
    _, key = await store.users.create_key("erin")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as erin:
        resp = await erin.post(
            "/schedules",
            json={
                "cron": "* * * * * *",
                "timezone": "UTC",
                "input": "tick",
                "agent": "ticker",
                "params": {"count": 1, "interval_ms": 0},
            },
        )
        assert resp.status_code == 201, resp.text
        sid = resp.json()["schedule_id"]

        # When two workers tick it for a few seconds, then it is deleted
        async def made() -> list[dict] | None:
            runs = (await erin.get(f"/schedules/{sid}/runs", params={"limit": 200})).json()
            return runs["runs"] if len(runs["runs"]) >= 4 else None

        await wait_for(made, timeout=30)
        assert (await erin.delete(f"/schedules/{sid}")).status_code == 204
        after_delete = await store.db.fetchval(
            "SELECT count(*) FROM schedule_ticks WHERE schedule_id = $1", uuid.UUID(sid)
        )

        # Then every tick made one run, on distinct whole seconds, and none after the delete
        rows = await store.db.fetch(
            "SELECT tick_at, run_id FROM schedule_ticks WHERE schedule_id = $1", uuid.UUID(sid)
        )
        ticks = [r["tick_at"] for r in rows]
        assert len(set(ticks)) == len(ticks) == after_delete
        assert all(t.microsecond == 0 for t in ticks)
        # (a tick while the previous run had not started yet makes none: run_id NULL)
        made = [str(r["run_id"]) for r in rows if r["run_id"] is not None]
        assert len(set(made)) == len(made) >= 4
        logged = ticked(workers)
        assert sorted(t["run_id"] for t in logged) == sorted(made)
