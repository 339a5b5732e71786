"""Submit, execute, follow: the core flow of a run, end to end on real Redis and Postgres."""

from __future__ import annotations

import pytest

from tests.helpers import assert_gapless_ticker, read_events, submit, wait_status


async def test_a_ticker_run_followed_live_yields_tokens_1_to_n_then_done(client, worker):
    run_id = await submit(client, agent="ticker", params={"count": 5, "interval_ms": 20})

    status, events = await read_events(client, run_id)

    assert status == 200
    assert events[0].event == "start"
    assert_gapless_ticker(events, 5)
    run = await wait_status(client, run_id, "succeeded")
    assert run["attempts"] == 1
    assert run["output"] == {"count": 5}
    assert run["last_seq"] == len(events)


async def test_submit_answers_202_with_location_and_events_url(client):
    resp = await client.post("/runs", json={"input": "hi", "agent": "ticker"})

    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "queued"
    assert resp.headers["location"] == f"/runs/{body['run_id']}"
    assert f"/runs/{body['run_id']}/events" in body["events_url"]


@pytest.mark.parametrize("via_query", [False, True])
async def test_a_stream_dropped_mid_run_resumes_without_gap_or_duplicate(client, worker, via_query):
    run_id = await submit(client, agent="ticker", params={"count": 8, "interval_ms": 30})

    # Given a client that read four events and dropped
    _, first = await read_events(client, run_id, limit=4)
    # When it reconnects with the last id it saw
    _, rest = await read_events(client, run_id, last_event_id=first[-1].id, via_query=via_query)

    # Then the union is exactly the run
    assert_gapless_ticker(first + rest, 8)
