"""`longrun runs waiting`, `longrun runs resume RUN --value JSON` and `submit --follow`'s prompt
on a terminal (a real pseudo-terminal), run as the console script against a live API and
worker."""

from __future__ import annotations

import asyncio
import json
import os
import pty
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from tests.cli_proc import LONGRUN, cli_env, longrun
from tests.helpers import submit, wait_status
from tests.procs import ROOT

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def stack(settings: Settings, api_factory, worker_factory, api_key: str, tmp_path: Path):
    s = settings.with_(agent_modules=("pauser=tests.agents:pauser",))
    srv = await api_factory(s)
    await worker_factory(s)
    env = cli_env(tmp_path, s, LONGRUN_URL=srv.url, LONGRUN_API_KEY=api_key)
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        yield env, c


async def test_runs_waiting_lists_what_a_run_asks_and_runs_resume_answers_it(stack) -> None:
    env, c = stack
    rid = await submit(c, agent="pauser", params={"payload": {"question": "ship it?"}})
    await wait_status(c, rid, "waiting")
    # When a person lists the waiting runs, then answers one
    listed = await longrun("runs", "waiting", env=env)
    answered = await longrun("runs", "resume", rid, "--value", '{"ship": true}', env=env)
    # Then they saw what it asks, and the run goes on with their answer
    assert listed.code == 0, listed
    assert rid in listed.out
    assert '{"question": "ship it?"}' in listed.out
    assert answered.code == 0, answered
    assert answered.out.strip() == f"run {rid} resumed: queued again"
    done = await wait_status(c, rid, "succeeded")
    assert done["output"] == {"answer": {"ship": True}}
    # And a second answer is refused (exit 3): the run is not waiting any more
    again = await longrun("runs", "resume", rid, "--value", "1", env=env)
    assert again.code == 3, again
    as_json = await longrun("runs", "waiting", "--json", env=env)
    assert json.loads(as_json.out) == []


async def test_runs_resume_with_a_value_that_is_not_json_exits_5_and_sends_nothing(stack) -> None:
    env, c = stack
    rid = await submit(c, agent="pauser")
    await wait_status(c, rid, "waiting")
    done = await longrun("runs", "resume", rid, "--value", "yes please", env=env)
    assert done.code == 5, done
    assert "--value is not JSON" in done.err
    assert (await c.get(f"/runs/{rid}")).json()["status"] == "waiting"


async def test_submit_follow_on_a_terminal_prompts_for_the_answer_and_finishes(stack) -> None:
    env, _ = stack
    # Given `submit --follow` on a terminal (a pseudo-terminal as its stdin)
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        LONGRUN, "submit", "go", "--agent", "pauser", "--follow",
        env=env, cwd=str(ROOT), stdin=slave,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    try:
        assert proc.stderr is not None
        # When the run asks, the person types an answer that is not JSON (text is a string)
        line = b""
        while b"asks:" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "the CLI ended before the run asked"
        os.write(master, b"blue\n")
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(master)
    # Then the run goes on with it and the command ends with its status
    assert proc.returncode == 0, (out, err)
    assert '[waiting for a person: {"question": "ok?"}]' in out.decode()
    assert "resumed" in err.decode()
    assert err.decode().strip().endswith("succeeded")
