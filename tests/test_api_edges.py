"""The API's edges: isolation, bad input and outages answer clear 4xx/503 JSON, never a 500,
and write nothing."""

from __future__ import annotations

import uuid

import httpx
import pytest

from shared.redis.keys import Keys
from tests.helpers import queue_backlog, read_events, submit, wait_status
from tests.tcp_proxy import TcpProxy


async def test_another_users_run_is_a_404_on_get_events_and_cancel(client, bob):
    run_id = await submit(client, agent="ticker", params={"count": 1})
    random_id = str(uuid.uuid4())

    for rid in (run_id, random_id):
        get = await bob.get(f"/runs/{rid}")
        ev = await bob.get(f"/runs/{rid}/events")
        cancel = await bob.post(f"/runs/{rid}/cancel")
        assert (get.status_code, ev.status_code, cancel.status_code) == (404, 404, 404)
        body = get.json()
        rid = body["request_id"]
        assert body == {"error": "not_found", "detail": "no such run", "request_id": rid}
    listed = await bob.get("/runs")
    assert listed.json()["runs"] == []


async def test_no_key_or_a_bad_key_is_a_401(api):
    async with httpx.AsyncClient(base_url=api.url) as anon:
        assert (await anon.get("/runs")).status_code == 401
        bad = await anon.get("/runs", headers={"Authorization": "Bearer lr_nope_nope"})
        assert bad.status_code == 401
        assert bad.json()["error"] == "unauthorized"
        assert (await anon.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": "x", "agent": "nope"}, 422, "unknown_agent"),
        ({"agent": "ticker"}, 422, "invalid_request"),
        ({"input": ""}, 422, "invalid_request"),
        ({"input": "x", "params": []}, 422, "invalid_request"),
        ({"input": "x", "surprise": 1}, 422, "invalid_request"),
        ({"input": "x", "thread_id": "no spaces allowed"}, 422, "invalid_request"),
        (
            {
                "input": "x",
                "metadata": {
                    "a": {
                        "b": {
                            "c": {
                                "d": {
                                    "e": {
                                        "f": {
                                            "g": {
                                                "h": {
                                                    "i": {
                                                        "j": {
                                                            "k": {
                                                                "l": {
                                                                    "m": {
                                                                        "n": {"o": {"p": {"q": 1}}}
                                                                    }
                                                                }
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            },
            422,
            "invalid_request",
        ),
    ],
)
async def test_bad_submissions_are_clear_4xx_and_write_nothing(client, store, body, status, code):
    resp = await client.post("/runs", json=body)

    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == code
    assert (await client.get("/runs")).json()["runs"] == []


async def test_malformed_json_is_a_400(client):
    resp = await client.post(
        "/runs", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "malformed_json"


async def test_an_oversized_body_is_a_413_even_when_chunked(client, settings):
    big = b'{"input": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'

    declared = await client.post("/runs", content=big, headers={"content-type": "application/json"})

    async def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    chunked = await client.post(
        "/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413
    assert chunked.status_code == 413
    assert chunked.json()["error"] == "body_too_large"
    assert (await client.get("/runs")).json()["runs"] == []


async def test_malformed_run_ids_and_last_event_ids_are_400(client):
    assert (await client.get("/runs/not-a-uuid")).status_code == 400
    run_id = await submit(client, agent="ticker", params={"count": 1})
    for bad in ("abc", "-1", "1.5", "9" * 40):
        status, _ = await read_events(client, run_id, last_event_id=bad)
        assert status == 400


async def test_cancelling_a_queued_run_ends_it_cancelled_with_a_cancelled_event(client):
    run_id = await submit(client, agent="ticker", params={"count": 3})

    resp = await client.post(f"/runs/{run_id}/cancel")

    assert resp.status_code == 202
    run = await wait_status(client, run_id, "cancelled")
    assert run["finished_at"] is not None
    _, events = await read_events(client, run_id)
    assert [e.event for e in events] == ["cancelled"]
    assert events[0].data["seq"] == 1


async def test_cancelling_a_running_run_stops_it_within_a_second(client, worker):
    run_id = await submit(client, agent="ticker", params={"count": 1000, "interval_ms": 50})
    _, first = await read_events(client, run_id, limit=3)

    await client.post(f"/runs/{run_id}/cancel")
    _, rest = await read_events(client, run_id, last_event_id=first[-1].id)

    assert rest[-1].event == "cancelled"
    run = await wait_status(client, run_id, "cancelled", timeout=2)
    assert run["status"] == "cancelled"
    assert len(first + rest) < 60


async def test_listing_is_paginated_newest_first(client):
    ids = [await submit(client, agent="ticker", params={"count": 1}) for _ in range(5)]

    page1 = (await client.get("/runs", params={"limit": 2})).json()
    page2 = (await client.get("/runs", params={"limit": 2, "cursor": page1["next_cursor"]})).json()
    page3 = (await client.get("/runs", params={"limit": 2, "cursor": page2["next_cursor"]})).json()

    got = [r["run_id"] for p in (page1, page2, page3) for r in p["runs"]]
    assert got == list(reversed(ids))
    assert page3["next_cursor"] is None
    assert (await client.get("/runs", params={"cursor": "junk"})).status_code == 400


async def test_when_redis_is_down_submit_is_503_with_retry_after_and_writes_nothing(
    api_factory, settings, store, api_key
):
    # Given an API whose Redis is unreachable (a closed port)
    dead = settings.with_(redis_url="redis://127.0.0.1:1/0", redis_connect_timeout=0.2)
    srv = await api_factory(dead)
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        resp = await c.post("/runs", json={"input": "x", "agent": "ticker"})
        ready = await c.get("/ready")

    assert resp.status_code == 503
    assert resp.headers["retry-after"]
    assert resp.json()["error"] == "unavailable"
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"redis": "down", "postgres": "ok"}
    assert await store.runs.list_runs("alice", limit=10) == []


async def test_when_postgres_is_down_submit_is_503_and_nothing_is_queued(
    api_factory, settings, api_key, redis_client
):
    # Given an API that reaches Postgres through a link we can cut
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    try:
        srv = await api_factory(settings.with_(database_url=proxy.url_for(settings.database_url)))
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=20
        ) as c:
            assert (await c.get("/runs")).status_code == 200  # the key is cached now
            # When Postgres goes away
            proxy.cut()
            resp = await c.post("/runs", json={"input": "x", "agent": "ticker"})
            ready = await c.get("/ready")
            # Then submit is refused with a hint to retry, and nothing was queued
            assert resp.status_code == 503, resp.text
            assert resp.headers["retry-after"]
            assert ready.json()["checks"]["postgres"] == "down"
            assert await queue_backlog(redis_client, Keys.from_settings(settings)) == 0
            # And when it comes back, submits work again
            proxy.restore()
            again = await c.post("/runs", json={"input": "x", "agent": "ticker"})
            assert again.status_code == 202
    finally:
        await proxy.stop()


@pytest.mark.parametrize(
    ("agent", "params"),
    [("ticker", {"count": -1}), ("ticker", {"interval_ms": "fast"}), ("chat", {"max_steps": -5})],
)
async def test_params_a_built_in_agent_would_refuse_are_a_422_at_submit(client, agent, params):
    resp = await client.post("/runs", json={"input": "x", "agent": agent, "params": params})

    assert resp.status_code == 422
    assert resp.json()["error"] == "bad_params"
    assert (await client.get("/runs")).json()["runs"] == []


async def test_submit_still_works_after_redis_forgot_its_scripts(client, redis_client):
    # Given a Redis that lost its script cache (restarted, failed over)
    await redis_client.script_flush()

    resp = await client.post("/runs", json={"input": "x", "agent": "ticker"})

    assert resp.status_code == 202
