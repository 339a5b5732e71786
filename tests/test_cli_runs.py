"""`longrun runs get|list|cancel|events|wait` and `longrun submit --follow`, run as the console
script against a live API and worker: what a person reads (token text joined as text, each
tool call on its own line, a final status line, how to resume after Ctrl-C), what a script
reads (`--json`), and the exit codes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import Settings
from tests.cli_proc import Running, cli_env, longrun
from tests.helpers import submit, wait_status
from tests.tcp_proxy import TcpProxy

LONG = {"count": 1000, "interval_ms": 50}


@pytest.fixture
def env(api, api_key: str, settings: Settings, tmp_path: Path) -> dict[str, str]:
    """A shell that exported the banner's LONGRUN_URL and LONGRUN_API_KEY."""
    return cli_env(tmp_path, settings, LONGRUN_URL=api.url, LONGRUN_API_KEY=api_key)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_submit_follow_joins_the_tickers_tokens_into_one_line_and_ends_with_a_status_line(
    env: dict[str, str], worker
) -> None:
    done = await longrun(
        "submit", "count", "--agent", "ticker", "--params", '{"count": 5, "interval_ms": 1}',
        "--follow", env=env,
    )  # fmt: skip

    assert done.code == 0, done
    assert done.out == "1 2 3 4 5\n"
    run_id = done.err_lines[0].split()[1]
    assert done.err_lines == [f"run {run_id} queued", f"run {run_id} succeeded"]


async def test_submit_follow_prints_model_text_as_text_and_each_tool_call_on_its_own_line(
    env: dict[str, str], worker
) -> None:
    # Given the chat agent on its offline model, which calls the calculator for arithmetic
    done = await longrun("submit", "what is 2+2?", "--follow", env=env)

    # Then its text reads as text, and the tool call and its result are lines of their own
    assert done.code == 0, done
    lines = done.out.splitlines()
    assert lines[0].startswith("You said: what is 2+2?"), done.out
    assert '[tool calculator {"expression": "2+2"}]' in lines
    assert "[tool calculator ok: 2+2 = 4]" in lines
    text = [line for line in lines if not line.startswith("[tool ")]
    assert all(" " in line for line in text), "tokens are joined, not one per line"
    assert done.err_lines[-1].endswith("succeeded")


async def test_a_run_that_fails_exits_1_with_its_error_in_the_status_line(
    api_factory, worker_factory, api_key: str, settings: Settings, tmp_path: Path
) -> None:
    # Given an agent that crashes after its first token
    crashing = settings.with_(agent_modules=("raiser=tests.agents:raiser",))
    api = await api_factory(crashing)
    await worker_factory(crashing)
    env = cli_env(tmp_path, settings, LONGRUN_URL=api.url, LONGRUN_API_KEY=api_key)

    done = await longrun("submit", "x", "--agent", "raiser", "--follow", env=env)

    assert done.code == 1, done
    assert done.out == "x\n"
    assert done.err_lines[-1].endswith("failed: agent_crashed: the agent raised RuntimeError")


async def test_ctrl_c_stops_following_says_how_to_resume_or_cancel_and_both_work(
    env: dict[str, str], worker
) -> None:
    # Given a long ticker run followed from the terminal
    follow = await Running.start(
        "submit", "long", "--agent", "ticker", "--params", json.dumps(LONG), "--follow", env=env
    )
    try:
        await follow.read_until("3 ")

        # When the user presses Ctrl-C
        stopped = await follow.interrupt()
    finally:
        await follow.kill()

    # Then following stops (exit 130), the run goes on, and stderr says how to resume or cancel
    assert stopped.code == 130, stopped
    assert "Traceback" not in stopped.err
    run_id = stopped.err_lines[0].split()[1]
    assert f"stopped following run {run_id} (it keeps running)" in stopped.err
    resume = next(line.split("resume: ")[1] for line in stopped.err_lines if "resume:" in line)
    assert resume.startswith(f"longrun runs events {run_id} --after ")
    assert f"cancel: longrun runs cancel {run_id}" in stopped.err
    after = int(resume.rsplit(" ", 1)[1])
    seen = stopped.out.split()

    # And the cancel command cancels it, and the resume command picks up after the last event
    cancelled = await longrun("runs", "cancel", run_id, env=env)
    assert cancelled.code == 0, cancelled
    assert cancelled.out.startswith(f"run {run_id} cancel"), cancelled
    resumed = await longrun(*resume.split()[1:], "--json", env=env)
    assert resumed.code == 1, resumed  # the run ended cancelled
    events = json_lines(resumed.out)
    assert events[0]["seq"] == after + 1
    assert events[-1]["type"] == "cancelled"
    tokens = [e["text"] for e in events if e["type"] == "token"]
    assert tokens[:1] == [str(len(seen) + 1)], (seen, tokens)  # nothing skipped or repeated
    assert resumed.err_lines[-1] == f"run {run_id} cancelled"


async def test_runs_get_and_list_show_a_run_and_give_the_apis_json_with_json(
    env: dict[str, str], client: httpx.AsyncClient, worker
) -> None:
    run_id = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 1})
    await wait_status(client, run_id, "succeeded")

    got = await longrun("runs", "get", run_id, env=env)
    got_json = await longrun("runs", "get", run_id, "--json", env=env)
    listed = await longrun("runs", "list", env=env)
    listed_json = await longrun("runs", "list", "--status", "succeeded", "--json", env=env)

    assert got.code == got_json.code == listed.code == listed_json.code == 0
    assert got.out.splitlines()[0] == f"run {run_id}: succeeded (agent ticker, attempt 1)"
    assert 'output    {"count": 2}' in got.out
    fresh = (await client.get(f"/runs/{run_id}")).json()
    shown = json.loads(got_json.out)
    assert shown.pop("events_url").split("?")[0] == fresh.pop("events_url").split("?")[0]
    assert shown == fresh  # the API's JSON as it is (but the freshly signed stream token)
    assert listed.out.split()[:3] == [run_id, "succeeded", "ticker"]
    assert [r["run_id"] for r in json.loads(listed_json.out)["runs"]] == [run_id]


async def test_runs_events_streams_the_whole_run_as_json_lines_and_exits_by_its_outcome(
    env: dict[str, str], client: httpx.AsyncClient, worker
) -> None:
    run_id = await submit(client, agent="ticker", params={"count": 3, "interval_ms": 1})

    done = await longrun("runs", "events", run_id, "--json", env=env)
    text = await longrun("runs", "events", run_id, "--after", "2", env=env)

    assert done.code == 0, done
    events = json_lines(done.out)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["text"] for e in events if e["type"] == "token"] == ["1", "2", "3"]
    assert events[-1]["type"] == "done"
    assert text.code == 0, text
    assert text.out == "2 3\n"  # after seq 2 (start, "1"): the ticker's tokens, spaced
    assert text.err_lines == [f"run {run_id} succeeded"]


async def test_runs_wait_exits_0_on_success_6_on_its_timeout_and_1_once_cancelled(
    env: dict[str, str], client: httpx.AsyncClient, worker
) -> None:
    quick = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 1})
    slow = await submit(client, agent="ticker", params=LONG)

    ok = await longrun("runs", "wait", quick, "--json", env=env)
    timed_out = await longrun("runs", "wait", slow, "--timeout", "0.5", env=env)
    await client.post(f"/runs/{slow}/cancel")
    cancelled = await longrun("runs", "wait", slow, env=env)

    assert ok.code == 0, ok
    assert json.loads(ok.out)["status"] == "succeeded"
    assert timed_out.code == 6, timed_out
    assert timed_out.err_lines == [f"longrun: run {slow} has not ended after 0.5 s"]
    assert cancelled.code == 1, cancelled
    assert cancelled.out == f"run {slow} cancelled\n"


async def test_runs_cancel_of_a_finished_run_says_there_is_nothing_to_cancel(
    env: dict[str, str], client: httpx.AsyncClient, worker
) -> None:
    run_id = await submit(client, agent="ticker", params={"count": 1, "interval_ms": 1})
    await wait_status(client, run_id, "succeeded")

    done = await longrun("runs", "cancel", run_id, "--json", env=env)
    text = await longrun("runs", "cancel", run_id, env=env)

    assert json.loads(done.out)["run_id"] == run_id
    assert text.out == f"run {run_id} already succeeded: nothing to cancel\n"


async def test_submit_follow_rides_out_a_dropped_connection_without_skipping_or_repeating(
    env: dict[str, str], api, worker
) -> None:
    # Given a run followed through a link that can be cut
    proxy = await TcpProxy("127.0.0.1", api.port).start()
    params = json.dumps({"count": 30, "interval_ms": 20})
    follow = await Running.start(
        "submit", "x", "--agent", "ticker", "--params", params, "--follow",
        env={**env, "LONGRUN_URL": proxy.url_for(api.url)},
    )  # fmt: skip
    try:
        await follow.read_until("5 ")

        # When the connection drops mid-run (and the network comes back)
        proxy.cut()
        proxy.restore()
        out, err = await asyncio.wait_for(follow.proc.communicate(), 30)
    finally:
        await follow.kill()
        await proxy.stop()

    # Then it resumed after the last event it had, and printed every token exactly once
    assert follow.proc.returncode == 0, err
    assert follow.seen + out.decode() == " ".join(str(i) for i in range(1, 31)) + "\n"
    assert "[connection lost; resuming after event " in err.decode()
