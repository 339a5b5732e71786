"""`POST /runs/stream`: a submit answered with its run's event stream, on real Redis, Postgres
and workers, through clients we did not write (curl, httpx, httpx-sse). The stream is the one
`GET /runs/{id}/events` serves, byte for byte; a client that leaves cancels its run unless it
chose `continue`, and can then resume; the Idempotency-Key, admission and thread rules are
POST /runs's; a process serves a bounded number of these streams and says so on `/health`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.fake_anthropic import FakeAnthropic, Reply
from tests.helpers import (
    Got,
    assert_gapless_ticker,
    read_events,
    submit,
    wait_for,
    wait_status,
)

TICKER = {"input": "count", "agent": "ticker"}
# A run that outlives any test unless it is cancelled.
ENDLESS = {**TICKER, "params": {"count": 100_000, "interval_ms": 50}}


def frames(raw: bytes) -> list[bytes]:
    """The event frames of an SSE body, comments (keep-alives, hints) left out."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln for ln in block.split(b"\n") if ln and not ln.startswith(b":")]
        if lines:
            out.append(b"\n".join(lines))
    return out


def run_id_of(resp: httpx.Response) -> str:
    where = resp.headers["content-location"]
    assert where.startswith("/runs/"), where
    return where.removeprefix("/runs/")


async def read_until(events: AsyncIterator[ServerSentEvent], etype: str) -> list[ServerSentEvent]:
    seen = []
    async for sse in events:
        seen.append(sse)
        if sse.event == etype:
            return seen
    raise AssertionError(f"the stream ended before a {etype!r} event: {seen}")


async def test_the_answer_is_the_runs_stream_exactly_as_get_events_serves_it(client, worker, store):
    # When a ticker run is submitted and streamed in one response
    body = {**TICKER, "params": {"count": 5, "interval_ms": 20}}
    async with client.stream("POST", "/runs/stream", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = await resp.aread()
    run_id = run_id_of(resp)

    # Then the body is the whole run, from seq 1 to its terminal event
    streamed = frames(raw)
    got = [json.loads(f.split(b"data: ", 1)[1]) for f in streamed]
    assert [e["seq"] for e in got] == list(range(1, 8))
    assert [e["type"] for e in got] == ["start", *["token"] * 5, "done"]
    # And the start event names the run, as the header does
    assert got[0]["run_id"] == run_id
    # And GET /runs/{id}/events serves the same frames, byte for byte
    async with client.stream("GET", f"/runs/{run_id}/events") as again:
        assert frames(await again.aread()) == streamed
    # And the archive holds the start event the clients saw
    archived = await store.runs.events_after(run_id, 0, 1)
    assert archived[0].data == streamed[0].split(b"data: ", 1)[1]
    run = await wait_status(client, run_id, "succeeded")
    assert run["output"] == {"count": 5}


async def test_curl_streams_a_run_submitted_with_a_50_kb_input(api, api_key, worker, tmp_path):
    # Given a 50 KB prompt in a file, as a shell script would send it
    text = ("fifty kilobytes of prompt " * 2000)[: 50 * 1024]
    data = tmp_path / "body.json"
    params = {"count": 3, "interval_ms": 10}
    data.write_text(json.dumps({**TICKER, "input": text, "params": params}))
    head = tmp_path / "head.txt"

    # When curl posts it to /runs/stream without buffering (-N)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "-D", str(head), "-X", "POST", f"{api.url}/runs/stream",
        "-H", f"Authorization: Bearer {api_key}", "-H", "Content-Type: application/json",
        "--data-binary", f"@{data}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)

    # Then it gets the run's events and the run's address
    assert proc.returncode == 0
    assert head.read_text().startswith("HTTP/1.1 200")
    types = [json.loads(f.split(b"data: ", 1)[1])["type"] for f in frames(out)]
    assert types == ["start", "token", "token", "token", "done"]
    location = next(
        line.split(":", 1)[1].strip()
        for line in head.read_text().splitlines()
        if line.lower().startswith("content-location:")
    )
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}
    ) as c:
        run = (await c.get(location)).json()
    assert run["status"] == "succeeded"
    assert run["input"] == text


async def test_a_client_that_leaves_mid_run_cancels_it_within_about_a_second_usage_kept(
    settings, api_factory, worker_factory, api_key
):
    async with FakeAnthropic() as fake:
        # Given a chat run whose model streams two words and then stalls, billed 4,000 tokens
        fake.script(Reply(text="one two three four", hang_after=5, input_tokens=4000))
        s = settings.with_(anthropic_api_key="test-key", anthropic_base_url=fake.url)
        api = await api_factory(s)
        await worker_factory(s)
        auth = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=api.url, headers=auth, timeout=10) as client:
            # And a client following it through POST /runs/stream (on_disconnect: the default)
            body = {"input": "what is 6*7?", "agent": "chat"}
            async with aconnect_sse(client, "POST", "/runs/stream", json=body) as source:
                run_id = run_id_of(source.response)
                events = source.aiter_sse()  # held: a dropped iterator closes the response
                seen = await read_until(events, "token")
                await fake.hanging.wait()
                # When it closes the connection mid-run
            left = time.monotonic()

            # Then the run ends cancelled within about a second, its usage and cost kept
            run = await wait_status(client, run_id, "cancelled", "succeeded", "failed")
            took = time.monotonic() - left
            assert run["status"] == "cancelled", run
            assert took < 3, f"cancelled {took:.2f}s after the client left"
            assert run["usage"]["input_tokens"] == 4000, run
            assert run["cost_usd"] > 0, run
            assert [e.event for e in seen] == ["start", "token"]
            # And the stream's terminal event says so
            _, events = await read_events(client, run_id)
            assert events[-1].event == "cancelled"


async def test_curl_killed_mid_stream_cancels_the_run(api, api_key, client, worker):
    # Given curl following an endless run it submitted
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "-X", "POST", f"{api.url}/runs/stream",
        "-H", f"Authorization: Bearer {api_key}", "-H", "Content-Type: application/json",
        "-d", json.dumps(ENDLESS),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = b""
    while b"event: token" not in first:
        first += await asyncio.wait_for(proc.stdout.readline(), 20)
    run_id = next(json.loads(f.split(b"data: ", 1)[1]) for f in frames(first))["run_id"]

    # When curl is killed
    proc.kill()
    await proc.wait()

    # Then the run is cancelled
    run = await wait_status(client, run_id, "cancelled", "succeeded", "failed", timeout=10)
    assert run["status"] == "cancelled"


async def test_continue_lets_the_run_go_on_and_get_events_resumes_it_without_gap(client, worker):
    # Given a client that chose `continue` and read three events
    body = {**TICKER, "params": {"count": 8, "interval_ms": 40}, "on_disconnect": "continue"}
    async with aconnect_sse(client, "POST", "/runs/stream", json=body) as source:
        run_id = run_id_of(source.response)
        first = []
        async for sse in source.aiter_sse():
            first.append(sse)
            if len(first) == 3:
                break
        # When its connection drops

    # Then the run goes on, and GET /runs/{id}/events with Last-Event-ID gives the rest
    status, rest = await read_events(client, run_id, last_event_id=first[-1].id)
    assert status == 200
    seen = [Got(e.id, e.event, e.json()) for e in first] + rest
    assert_gapless_ticker(seen, 8)
    assert (await wait_status(client, run_id, "succeeded"))["output"] == {"count": 8}


async def test_a_repeated_idempotency_key_streams_the_same_run(client, worker):
    # Given a streamed submit with an Idempotency-Key
    body = {**TICKER, "params": {"count": 3, "interval_ms": 10}}
    key = {"Idempotency-Key": "stream-once"}
    async with client.stream("POST", "/runs/stream", json=body, headers=key) as first:
        one = frames(await first.aread())
    # When it is sent again (the client never saw the answer), by stream and by POST /runs
    async with client.stream("POST", "/runs/stream", json=body, headers=key) as second:
        two = frames(await second.aread())
    plain = await client.post("/runs", json=body, headers=key)

    # Then it streams the same run, whole, and says it is a replay
    assert run_id_of(second) == run_id_of(first)
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert two == one
    assert plain.json()["run_id"] == run_id_of(first)
    # And a different body under the same key is refused, as POST /runs refuses it
    other = await client.post("/runs/stream", json={**body, "input": "other"}, headers=key)
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"
    assert len((await client.get("/runs")).json()["runs"]) == 1


async def test_past_the_process_cap_a_stream_is_refused_503_and_health_reports_it(
    settings, api_factory, worker, api_key
):
    # Given an API serving at most one submit-and-stream answer, busy with one
    api = await api_factory(settings.with_(max_streams_per_process=1))
    auth = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=auth, timeout=10) as client:
        async with aconnect_sse(client, "POST", "/runs/stream", json=ENDLESS) as source:
            run_id = run_id_of(source.response)
            events = source.aiter_sse()  # held: a dropped iterator closes the response
            await read_until(events, "start")
            health = (await client.get("/health")).json()
            assert health["streams"] == {"in_flight": 1, "cap": 1}

            # When another arrives
            refused = await client.post("/runs/stream", json=TICKER)

            # Then it is refused with 503 and Retry-After, and writes nothing
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == "streams_full"
            assert refused.json()["request_id"] == refused.headers["x-request-id"]
            runs = (await client.get("/runs")).json()["runs"]
            assert [r["run_id"] for r in runs] == [run_id]

        # And once the stream has ended its place is free again
        async def freed() -> bool:
            return (await client.get("/health")).json()["streams"]["in_flight"] == 0

        await wait_for(freed, timeout=10)
        await wait_status(client, run_id, "cancelled")
        async with client.stream("POST", "/runs/stream", json=TICKER) as resp:
            assert resp.status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**TICKER, "on_disconnect": "never"}, "invalid_request"),
        ({**TICKER, "on_disconnect": None}, "invalid_request"),
        ({**TICKER, "agent": "nobody"}, "unknown_agent"),
        ({**TICKER, "params": {"count": -1}}, "bad_params"),
        ({"agent": "ticker"}, "invalid_request"),
        ({**TICKER, "surprise": 1}, "invalid_request"),
    ],
)
async def test_bad_input_is_a_4xx_json_error_that_writes_nothing(client, body, code):
    resp = await client.post("/runs/stream", json=body)

    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == code
    assert resp.json()["request_id"] == resp.headers["x-request-id"]
    assert (await client.get("/runs")).json()["runs"] == []
    health = (await client.get("/health")).json()
    assert health["streams"]["in_flight"] == 0


async def test_refusals_are_those_of_post_runs(client, api):
    # No credentials: 401, as POST /runs
    async with httpx.AsyncClient(base_url=api.url) as anon:
        assert (await anon.post("/runs/stream", json=TICKER)).status_code == 401
    # A busy thread in `reject` mode: 409 thread_busy, as POST /runs
    await submit(client, **ENDLESS, thread_id="t-1")
    busy = {**TICKER, "thread_id": "t-1", "thread_mode": "reject"}
    streamed = await client.post("/runs/stream", json=busy)
    plain = await client.post("/runs", json=busy)
    assert streamed.status_code == plain.status_code == 409
    assert streamed.json()["error"] == plain.json()["error"] == "thread_busy"
    # Malformed JSON: 400
    bad = await client.post(
        "/runs/stream", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "malformed_json"


async def test_the_openapi_schema_describes_the_endpoint(client):
    schema = (await client.get("/openapi.json")).json()
    op = schema["paths"]["/runs/stream"]["post"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert "Content-Location" in op["responses"]["200"]["headers"]
    assert {"422", "429", "503"} <= set(op["responses"])
    body = schema["components"]["schemas"]["SubmitStream"]["properties"]
    assert body["on_disconnect"]["enum"] == ["cancel", "continue"]
    assert body["agent"]["anyOf"][0]["enum"]  # the registered agents, as for POST /runs


async def test_another_method_on_the_stream_path_is_a_405_naming_post(client):
    resp = await client.get("/runs/stream")

    assert resp.status_code == 405
    assert resp.headers["allow"] == "OPTIONS, POST"


async def test_a_page_on_an_allowed_origin_can_read_the_runs_address(
    settings, api_factory, worker, api_key
):
    api = await api_factory(settings.with_(cors_origins=("https://app.test",)))
    headers = {"Authorization": f"Bearer {api_key}", "Origin": "https://app.test"}
    body = {**TICKER, "params": {"count": 1, "interval_ms": 0}}
    async with (
        httpx.AsyncClient(base_url=api.url, headers=headers, timeout=10) as c,
        c.stream("POST", "/runs/stream", json=body) as resp,
    ):
        await resp.aread()
    assert resp.headers["access-control-allow-origin"] == "https://app.test"
    assert "content-location" in resp.headers["access-control-expose-headers"].lower()


async def test_the_lane_and_the_route_answer_alike(api, store, worker):
    # Given a key the API has not seen: its first submit-and-stream goes to the route (the
    # key's look-up in Postgres, then cached), its next ones the lane's way (past FastAPI)
    _, key = await store.users.create_key("dora")
    body = {**TICKER, "params": {"count": 3, "interval_ms": 5}}
    answers = []
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        # When each streams a run, the caller naming its request
        for rid in ("by-route", "by-lane"):
            async with c.stream(
                "POST", "/runs/stream", json=body, headers={"X-Request-ID": rid}
            ) as resp:
                answers.append((resp, frames(await resp.aread())))
        # and one more is refused (a malformed Idempotency-Key), by the lane
        bad = await c.post("/runs/stream", json=body, headers={"Idempotency-Key": "k" * 256})
    (route, route_frames), (lane, lane_frames) = answers

    # Then both are 200 event streams with the same headers, in the same order, each with the
    # caller's request id, and the whole run in each
    assert route.status_code == lane.status_code == 200
    names = [[k.decode().lower() for k, _ in r.headers.raw] for r in (route, lane)]
    assert names[0] == names[1]
    assert (route.headers["x-request-id"], lane.headers["x-request-id"]) == ("by-route", "by-lane")
    assert run_id_of(route) != run_id_of(lane)
    for got in (route_frames, lane_frames):
        events = [json.loads(f.split(b"data: ", 1)[1]) for f in got]
        assert [e["type"] for e in events] == ["start", "token", "token", "token", "done"]
    # And the lane's refusal is the route's (POST /runs's), its request id in body and header
    assert bad.status_code == 422
    assert bad.json()["request_id"] == bad.headers["x-request-id"]
    assert len(await store.runs.list_runs("dora", limit=10)) == 2
