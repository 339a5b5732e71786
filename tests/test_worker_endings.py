"""How a real `longrun worker` process ends runs, seen from outside: `GET /runs/{id}` and the
worker's JSON log. A chat run cancelled mid-stream keeps the usage and cost already billed; the
log names the status a run ended with in the API's words (`succeeded`, not the transition's
`succeed`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fake_anthropic import FakeAnthropic, Reply
from tests.helpers import read_events, submit, wait_for, wait_status
from tests.procs import WorkerProc, start_worker, stop_all

pytestmark = pytest.mark.slow


def finished_lines(proc: WorkerProc) -> dict[str, dict[str, Any]]:
    """The worker's `run_finished` lines, by run id."""
    out = {}
    for raw in proc.log().splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("event") == "run_finished":
                out[line["run_id"]] = line
    return out


async def test_a_chat_run_cancelled_mid_stream_in_a_worker_process_keeps_its_usage_and_cost(
    settings, client, store, tmp_path
):
    async with FakeAnthropic() as fake:
        # Given a worker process whose model streams two words, then stalls
        fake.script(Reply(text="one two three four", hang_after=5, input_tokens=4000))
        worker = await start_worker(
            settings, "w1", tmp_path, ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=fake.url
        )
        try:
            run_id = await submit(client, input="what is 6*7?", agent="chat")
            status, seen = await read_events(client, run_id, limit=3)  # start, two tokens
            assert status == 200
            assert [e.event for e in seen] == ["start", "token", "token"]
            await fake.hanging.wait()

            # When the run is cancelled while the model's stream is stalled
            assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202

            # Then it ends cancelled, with the input tokens already billed and their cost
            run = await wait_status(client, run_id, "cancelled", "succeeded", "failed")
            assert run["status"] == "cancelled", run
            assert run["usage"]["input_tokens"] == 4000, run
            assert run["usage"]["cost_usd"] > 0, run
            assert run["cost_usd"] == pytest.approx(run["usage"]["cost_usd"]), run
            # And the user's daily spend counts it
            assert await store.users.spent_today("alice") == pytest.approx(run["cost_usd"])
            # And the stream's terminal event carries the same usage
            _, events = await read_events(client, run_id)
            assert events[-1].event == "cancelled"
            assert events[-1].data["usage"]["input_tokens"] == 4000
        finally:
            await stop_all([worker])


async def test_the_worker_logs_the_status_a_run_ended_with_as_the_api_names_it(
    settings, api_factory, api_key, tmp_path
):
    # Given a worker process that knows an agent which raises
    s = settings.with_(agent_modules=("raiser=tests.agents:raiser",))
    api = await api_factory(s)
    worker = await start_worker(s, "w1", tmp_path)
    try:
        async with httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
        ) as client:
            # When one run succeeds, one fails and one is cancelled while running
            ok = await submit(client, agent="ticker", params={"count": 1, "interval_ms": 0})
            bad = await submit(client, agent="raiser")
            slow = await submit(client, agent="ticker", params={"count": 1000, "interval_ms": 50})
            await wait_status(client, slow, "running")
            await client.post(f"/runs/{slow}/cancel")
            ended = {
                rid: await wait_status(client, rid, "succeeded", "failed", "cancelled")
                for rid in (ok, bad, slow)
            }
        lines = await wait_for(lambda: _all_logged(worker, ended), timeout=20, interval=0.1)
    finally:
        await stop_all([worker])

    # Then each run's `run_finished` line says the status GET /runs/{id} says
    assert {rid: ended[rid]["status"] for rid in ended} == {
        ok: "succeeded",
        bad: "failed",
        slow: "cancelled",
    }
    assert {rid: lines[rid]["status"] for rid in ended} == {
        rid: ended[rid]["status"] for rid in ended
    }


async def _all_logged(worker: WorkerProc, runs: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    lines = finished_lines(worker)
    return lines if all(rid in lines for rid in runs) else None
