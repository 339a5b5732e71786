"""Waiting for a run's end over plain HTTP: `GET /runs/{id}/wait` and `POST /runs/wait` answer
the ended run (as `GET /runs/{id}` shows it) as soon as it ends, or 202 with the run as it stands,
`Retry-After` and `Location` when the time passes first; bad input is a 422 that writes nothing;
waiters are served by the hub and leave nothing behind when their client goes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.coalesce import Coalesced
from cli.admin import revoke_key
from shared.config import Settings
from shared.redis.admission import AdmissionIO
from shared.redis.keys import Keys
from shared.store import Store
from tests.helpers import submit, wait_for, wait_status

pytestmark = pytest.mark.timeout(60)

LONG = {"count": 1000, "interval_ms": 50}


def without_token(run: dict[str, Any]) -> dict[str, Any]:
    """A run's JSON without the freshly signed stream token of its `events_url`."""
    return {**run, "events_url": run["events_url"].split("?")[0]}


async def test_waiting_on_a_run_that_has_ended_answers_200_with_the_run_at_once(
    client: httpx.AsyncClient, worker
) -> None:
    run_id = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 1})
    await wait_status(client, run_id, "succeeded")

    waited = await client.get(f"/runs/{run_id}/wait", params={"timeout": 300})

    assert waited.status_code == 200, waited.text
    got = (await client.get(f"/runs/{run_id}")).json()
    assert without_token(waited.json()) == without_token(got)
    assert waited.json()["output"] == {"count": 2}


async def test_a_waiter_is_answered_as_soon_as_the_run_ends(
    client: httpx.AsyncClient, worker
) -> None:
    # Given a ticker run of about a second
    run_id = await submit(client, agent="ticker", params={"count": 10, "interval_ms": 100})

    # When a client waits on it with time to spare
    started = time.monotonic()
    waited = await client.get(f"/runs/{run_id}/wait", params={"timeout": 30}, timeout=40)
    took = time.monotonic() - started

    # Then it gets the ended run, long before its timeout
    assert waited.status_code == 200, waited.text
    assert waited.json()["status"] == "succeeded"
    assert waited.json()["output"] == {"count": 10}
    assert took < 15, took


async def test_a_wait_whose_time_passes_first_answers_202_with_the_run_retry_after_and_location(
    client: httpx.AsyncClient, worker
) -> None:
    run_id = await submit(client, agent="ticker", params=LONG)

    waited = await client.get(f"/runs/{run_id}/wait", params={"timeout": 0.3})

    assert waited.status_code == 202, waited.text
    assert waited.json()["run_id"] == run_id
    assert waited.json()["status"] in ("queued", "running")
    assert waited.headers["retry-after"] == "1"
    assert waited.headers["location"] == f"/runs/{run_id}/wait"
    assert waited.headers["x-request-id"]
    await client.post(f"/runs/{run_id}/cancel")


async def test_post_runs_wait_submits_and_answers_the_ended_run(
    client: httpx.AsyncClient, worker, store: Store
) -> None:
    body = {"input": "x", "agent": "ticker", "params": {"count": 3, "interval_ms": 1}}

    done = await client.post("/runs/wait", params={"timeout": 30}, json=body, timeout=40)

    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
    assert done.json()["output"] == {"count": 3}
    assert done.json()["input"] == "x"


async def test_post_runs_wait_answers_202_with_location_and_a_replay_waits_on_the_same_run(
    client: httpx.AsyncClient, worker
) -> None:
    body = {"input": "x", "agent": "ticker", "params": LONG}
    key = {"Idempotency-Key": "wait-once"}

    first = await client.post("/runs/wait", params={"timeout": 0.2}, json=body, headers=key)
    again = await client.post("/runs/wait", params={"timeout": 0}, json=body, headers=key)

    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    assert first.headers["location"] == f"/runs/{run_id}/wait"
    assert first.headers["retry-after"] == "1"
    assert again.status_code == 202, again.text
    assert again.json()["run_id"] == run_id
    await client.post(f"/runs/{run_id}/cancel")


@pytest.mark.parametrize("timeout", ["-1", "300.5", "301", "abc", "nan", "inf", ""])
async def test_a_wait_timeout_out_of_range_or_not_a_number_is_a_422_that_writes_nothing(
    client: httpx.AsyncClient, store: Store, timeout: str
) -> None:
    run_id = await submit(client, agent="ticker", params={"count": 1})
    body = {"input": "x", "agent": "ticker"}

    waited = await client.get(f"/runs/{run_id}/wait", params={"timeout": timeout})
    posted = await client.post("/runs/wait", params={"timeout": timeout}, json=body)

    for answer in (waited, posted):
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "invalid_request"
        assert "timeout" in answer.json()["detail"]
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    listed = (await client.get("/runs")).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]  # POST /runs/wait wrote nothing


async def test_another_users_run_is_a_404_to_wait_on(
    client: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    run_id = await submit(client, agent="ticker")

    waited = await bob.get(f"/runs/{run_id}/wait", params={"timeout": 1})

    assert waited.status_code == 404
    assert waited.json()["error"] == "not_found"


async def test_many_waiters_of_a_queued_run_hear_of_its_cancel_from_the_hub(
    client: httpx.AsyncClient, api
) -> None:
    # Given a queued run (no worker) and twenty clients waiting on it
    run_id = await submit(client, agent="ticker")
    waits = [
        asyncio.create_task(client.get(f"/runs/{run_id}/wait", params={"timeout": 60}, timeout=70))
        for _ in range(20)
    ]
    await wait_for(_health_says(client, waiters=20))

    # When the run is cancelled (the API publishes its terminal event)
    await client.post(f"/runs/{run_id}/cancel")

    # Then every waiter gets the cancelled run, and the hub holds no waiter
    answers = await asyncio.wait_for(asyncio.gather(*waits), 30)
    assert {(a.status_code, a.json()["status"]) for a in answers} == {(200, "cancelled")}
    assert (await client.get("/health")).json()["waiters"] == 0


async def test_a_waiter_whose_client_leaves_is_forgotten(
    client: httpx.AsyncClient, api, api_key: str
) -> None:
    run_id = await submit(client, agent="ticker")
    # Given a raw client waiting on the queued run
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.sendall(
        f"GET /runs/{run_id}/wait?timeout=300 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {api_key}\r\n\r\n".encode()
    )
    await wait_for(_health_says(client, waiters=1))

    # When it goes away
    sock.close()

    # Then the hub lets its waiter go (the http.disconnect is noticed, not the 300 s)
    await wait_for(_health_says(client, waiters=0), timeout=10)


def _health_says(client: httpx.AsyncClient, **expected: int) -> Any:
    async def check() -> bool:
        health = (await client.get("/health")).json()
        return all(health.get(k) == v for k, v in expected.items())

    return check


async def test_a_stopping_api_answers_its_waiters_at_once_with_202(
    api_proc, api_key: str, store: Store
) -> None:
    # Given a real API process and a client waiting on a queued run
    api = await api_proc()
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as c:
        run_id = await submit(c, agent="ticker")
        waiting = asyncio.create_task(c.get(f"/runs/{run_id}/wait", params={"timeout": 300}))
        await wait_for(_health_says(c, waiters=1))

        # When the API is told to stop
        started = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        answer = await asyncio.wait_for(waiting, 20)

    # Then the waiter gets a 202 with the run at once, to wait again elsewhere
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "queued"
    assert answer.headers["location"] == f"/runs/{run_id}/wait"
    assert time.monotonic() - started < 10
    assert await asyncio.wait_for(api.proc.wait(), 20) == 0


def test_the_openapi_schema_describes_both_waits() -> None:
    schema = create_app(Settings()).openapi()
    get = schema["paths"]["/runs/{run_id}/wait"]["get"]
    post = schema["paths"]["/runs/wait"]["post"]
    for op in (get, post):
        assert {"200", "202", "422"} <= set(op["responses"])
        (timeout,) = [p for p in op["parameters"] if p["name"] == "timeout"]
        assert timeout["in"] == "query"
        assert (timeout["schema"]["minimum"], timeout["schema"]["maximum"]) == (0, 300)
    assert "requestBody" in post
    assert json.dumps(post["requestBody"]).count("SubmitRun") == 1


async def test_get_on_the_submit_and_wait_path_is_a_405_not_a_malformed_run_id(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/runs/wait")

    assert answer.status_code == 405
    assert answer.headers["allow"] == "OPTIONS, POST"


async def test_a_key_revoked_while_its_request_waits_gets_a_401_not_the_run(
    client: httpx.AsyncClient, api, store: Store, settings
) -> None:
    # Given a second key of the same user, waiting on a queued run
    key_id, key = await store.users.create_key("alice")
    run_id = await submit(client, agent="ticker")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as other:
        waiting = asyncio.create_task(other.get(f"/runs/{run_id}/wait", params={"timeout": 60}))
        await wait_for(_health_says(client, waiters=1))

        # When that key is revoked, and the run then ends
        assert await revoke_key(settings, key_id)
        await client.post(f"/runs/{run_id}/cancel")
        answer = await asyncio.wait_for(waiting, 20)

    # Then the waiter of the revoked key is refused; the other key still reads the run
    assert answer.status_code == 401, answer.text
    assert (await client.get(f"/runs/{run_id}/wait")).json()["status"] == "cancelled"


async def test_concurrent_identical_reads_share_one_call_and_a_cancelled_caller_spares_it() -> None:
    calls = 0
    release = asyncio.Event()

    async def read() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "run"

    shared = Coalesced()
    callers = [asyncio.create_task(shared("k", read)) for _ in range(100)]
    await asyncio.sleep(0)
    callers[0].cancel()
    release.set()

    got = await asyncio.gather(*callers[1:])
    assert calls == 1
    assert set(got) == {"run"}
    assert await shared("k", read) == "run"  # nothing in flight any more: a new call
    assert calls == 2


async def test_submit_and_wait_refused_by_the_kill_switch_is_a_503_that_writes_nothing(
    client: httpx.AsyncClient, settings, redis_client
) -> None:

    switch = AdmissionIO(redis_client, Keys.from_settings(settings))
    await switch.set_paused("maintenance")
    try:
        refused = await client.post(
            "/runs/wait", params={"timeout": 5}, json={"input": "x", "agent": "ticker"}
        )
    finally:
        await switch.set_paused(None)

    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "paused"
    assert refused.headers["retry-after"]
    assert (await client.get("/runs")).json()["runs"] == []
