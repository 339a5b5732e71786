"""`priority` on submit: stored on the run and shown in its JSON, 422 for an unknown value and
403 above the API key's maximum (writing nothing either way), `longrun keys create
--max-priority`, and higher priorities started first by a worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.redis.keys import Keys
from shared.store import Store
from tests.cli_proc import cli_env, longrun
from tests.helpers import queue_backlog, wait_for, wait_status

BODY = {"input": "hi", "agent": "ticker", "params": {"count": 1, "interval_ms": 1}}


@pytest.fixture
async def boss(api, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose key may ask for high priority."""
    _, key = await store.users.create_key("boss", max_priority="high")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        yield c


async def test_a_run_keeps_its_priority_and_shows_it(client, boss):
    low = await client.post("/runs", json={**BODY, "priority": "low"})
    assert low.status_code == 202, low.text
    got = await client.get(f"/runs/{low.json()['run_id']}")
    assert got.json()["priority"] == "low"
    plain = await client.post("/runs", json=BODY)
    assert (await client.get(f"/runs/{plain.json()['run_id']}")).json()["priority"] == "normal"
    high = await boss.post("/runs", json={**BODY, "priority": "high"})
    assert high.status_code == 202, high.text
    assert (await boss.get(f"/runs/{high.json()['run_id']}")).json()["priority"] == "high"


@pytest.mark.parametrize("path", ["/runs", "/runs/stream", "/runs/wait"])
async def test_an_unknown_priority_is_a_422_that_writes_nothing(
    client, store, redis_client, settings, path
):
    answer = await client.post(path, json={**BODY, "priority": "urgent"})
    assert answer.status_code == 422
    assert "request_id" in answer.json()
    assert await store.runs.list_runs("alice", limit=5) == []
    assert await queue_backlog(redis_client, Keys.from_settings(settings)) == 0


@pytest.mark.parametrize("path", ["/runs", "/runs/stream", "/runs/wait"])
async def test_a_priority_above_the_keys_maximum_is_a_403_that_writes_nothing(
    client, store, redis_client, settings, path
):
    # Given a key with the default maximum (normal)
    answer = await client.post(path, json={**BODY, "priority": "high"})
    # Then asking for high is refused, as JSON, and nothing is written
    assert answer.status_code == 403
    assert answer.json()["error"] == "priority_not_allowed"
    assert "request_id" in answer.json()
    assert await store.runs.list_runs("alice", limit=5) == []
    assert await queue_backlog(redis_client, Keys.from_settings(settings)) == 0


async def test_grouped_submits_keep_each_ones_priority(boss, store):
    prios = ["high", "normal", "low"] * 4
    answers = await asyncio.gather(
        *(boss.post("/runs", json={**BODY, "priority": p}) for p in prios)
    )
    for prio, answer in zip(prios, answers, strict=True):
        assert answer.status_code == 202
        run = await store.runs.get_run(answer.json()["run_id"])
        assert run is not None
        assert run.priority == prio


async def test_higher_priorities_start_first(boss, store, worker_factory):
    # Given runs queued while no worker runs: two low, two normal, two high
    ids = {}
    for prio in ("low", "normal", "high"):
        for i in range(2):
            answer = await boss.post("/runs", json={**BODY, "priority": prio})
            ids[answer.json()["run_id"]] = f"{prio}{i}"
    # When a worker with one slot takes them
    await worker_factory(concurrency=1)
    for run_id in ids:
        await wait_status(boss, run_id, "succeeded")
    # Then they started high first, then normal, then low, each level in submit order
    runs = [await store.runs.get_run(r) for r in ids]
    started = sorted((r.started_at, ids[r.run_id]) for r in runs if r and r.started_at)
    assert [name for _, name in started] == ["high0", "high1", "normal0", "normal1", "low0", "low1"]


async def test_keys_create_max_priority_makes_a_key_that_may_ask_for_it(api, settings, tmp_path):
    done = await longrun(
        "keys", "create", "--user", "vip", "--max-priority", "high", env=cli_env(tmp_path, settings)
    )
    assert done.code == 0, done
    key = done.out.strip().splitlines()[-1]
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        answer = await c.post("/runs", json={**BODY, "priority": "high"})
        assert answer.status_code == 202, answer.text

        async def shown() -> bool:
            got = await c.get(f"/runs/{answer.json()['run_id']}")
            return got.json()["priority"] == "high"

        assert await wait_for(shown, timeout=5)
