"""Threads: runs of one thread never overlap and run in submission order; a busy thread does
not stall other threads; a finished run's messages become the next run's history."""

from __future__ import annotations

import itertools
from datetime import datetime

from shared.history import load_history
from shared.redis.cache import ThreadCache
from shared.redis.keys import Keys
from tests.helpers import submit, wait_status


def _t(run: dict) -> datetime:
    return datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["finished_at"])


async def test_runs_of_one_thread_run_one_at_a_time_in_submission_order(client, worker):
    # Given three runs submitted at once to one thread, and one run on another thread
    ids = [
        await submit(client, agent="ticker", thread_id="t1", params={"count": 5, "interval_ms": 40})
        for _ in range(3)
    ]
    other = await submit(client, agent="ticker", thread_id="t2", params={"count": 1})

    runs = [await wait_status(client, rid, "succeeded") for rid in ids]
    other_run = await wait_status(client, other, "succeeded")

    # Then they ran strictly one after the other, in order
    spans = [_t(r) for r in runs]
    for (_, end_prev), (start_next, _) in itertools.pairwise(spans):
        assert start_next >= end_prev
    # And the other thread's run did not wait for them
    assert _t(other_run)[1] < spans[-1][1]


async def test_the_second_run_of_a_thread_sees_the_first_runs_messages(
    client, worker, store, settings, redis_client
):
    first = await submit(client, agent="chat", thread_id="conv", input="my name is Ada")
    second = await submit(client, agent="chat", thread_id="conv", input="what is my name?")
    await wait_status(client, first, "succeeded", timeout=30)
    await wait_status(client, second, "succeeded", timeout=30)

    messages = await store.threads.thread_messages("alice", "conv")

    by_run = [m["run_id"] for m in messages]
    assert by_run.index(first) < by_run.index(second)  # first's messages come first
    assert messages[0]["role"] == "user"
    assert "my name is Ada" in str(messages[0]["content"])
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    # Another user's thread of the same name is a different thread
    assert await store.threads.thread_messages("bob", "conv") == []


async def test_history_read_after_a_write_is_never_stale(
    client, worker, store, settings, redis_client
):
    keys = Keys.from_settings(settings)
    first = await submit(client, agent="chat", thread_id="c", input="one")
    await wait_status(client, first, "succeeded", timeout=30)
    # Given a warm cache
    warm = await load_history(store, ThreadCache(redis_client, keys), "alice", "c")
    assert await redis_client.exists(keys.thread_history("alice", "c"))
    # When another run writes to the thread
    second = await submit(client, agent="chat", thread_id="c", input="two")
    await wait_status(client, second, "succeeded", timeout=30)
    # Then the next read sees the write
    after = await load_history(store, ThreadCache(redis_client, keys), "alice", "c")
    assert len(after) > len(warm)
    assert after[: len(warm)] == warm
    assert "two" in str(after[len(warm)]["content"])


async def test_reject_mode_refuses_a_busy_thread_with_409(client, worker):
    running = await submit(client, agent="ticker", thread_id="r", params={"count": 50})
    await wait_status(client, running, "running")

    resp = await client.post(
        "/runs", json={"input": "x", "agent": "ticker", "thread_id": "r", "thread_mode": "reject"}
    )

    assert resp.status_code == 409
    assert resp.json()["error"] == "thread_busy"
    assert len((await client.get("/runs", params={"thread_id": "r"})).json()["runs"]) == 1


async def test_interrupt_mode_cancels_the_running_run_then_runs(client, worker):
    running = await submit(
        client, agent="ticker", thread_id="i", params={"count": 1000, "interval_ms": 20}
    )
    await wait_status(client, running, "running")

    newer = await submit(
        client, agent="ticker", thread_id="i", thread_mode="interrupt", params={"count": 2}
    )

    assert (await wait_status(client, running, "cancelled", timeout=5))["status"] == "cancelled"
    assert (await wait_status(client, newer, "succeeded", timeout=10))["status"] == "succeeded"


async def test_thread_messages_endpoint_returns_the_history_and_isolates_users(
    client, worker, api, store
):
    import httpx

    rid = await submit(client, agent="chat", thread_id="h", input="hello there")
    await wait_status(client, rid, "succeeded", timeout=30)

    body = (await client.get("/threads/h/messages")).json()

    assert body["messages"][0]["role"] == "user"
    assert body["messages"][0]["run_id"] == rid
    _, key = await store.users.create_key("bob")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}
    ) as bob:
        same_id = {"X-Request-ID": "fixed-for-comparison"}
        theirs = await bob.get("/threads/h/messages", headers=same_id)
        nothing = await bob.get("/threads/never-used/messages", headers=same_id)
    assert theirs.status_code == nothing.status_code == 404
    assert theirs.content == nothing.content


async def test_the_daily_ceiling_counts_spend_recorded_by_any_worker(client, worker, store):
    # Given spend over the daily ceiling already recorded in Postgres (by any process)
    await store.users.add_spend("alice", 25.0)

    rid = await submit(client, agent="chat", input="hello")

    run = await wait_status(client, rid, "failed", timeout=30)
    assert run["error"]["code"] == "daily_budget_exceeded"
    assert await store.users.spent_today("alice") >= 25.0
    assert await store.users.spent_today("bob") == 0.0
