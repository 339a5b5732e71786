"""How a real `longrun worker` process ends runs, seen from outside: `GET /runs/{id}` and the
worker's JSON log. A chat run cancelled mid-stream keeps the usage and cost already billed; the
log names the status a run ended with in the API's words (`succeeded`, not the transition's
`succeed`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fake_anthropic import FakeAnthropic, Reply
from tests.helpers import read_events, submit, wait_status
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
            assert await store.spent_today("alice") == pytest.approx(run["cost_usd"])
            # And the stream's terminal event carries the same usage
            _, events = await read_events(client, run_id)
            assert events[-1].event == "cancelled"
            assert events[-1].data["usage"]["input_tokens"] == 4000
        finally:
            await stop_all([worker])
