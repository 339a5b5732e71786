"""Logs of a full run across real processes (an API, two workers, one of them paused past its
lease so the run moves): every line is JSON, every line of the run's work carries the one
`run_id`, its `attempt` and the `worker`, request lines carry the request id, and no planted
secret appears anywhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from shared.logs import REDACTED, redact, scrub
from shared.redis.keys import Keys
from tests.helpers import wait_for, wait_status
from tests.procs import ROOT, WorkerProc, start_worker, stop_all
from tests.test_ops_shutdown import ApiProc, start_api

PROVIDER_CANARY = "sk-ant-api03-CANARY-provider-key-0123456789"
BAD_KEY_CANARY = "lr_deadbeef_CANARY-bad-key-0123456789abcdef"
# Lines about a queue entry before any attempt holds it: they know the run, not an attempt.
BEFORE_ATTEMPT = {"entry_reclaimed", "entry_skipped", "run_dead_lettered"}


def run_python(script: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter at the repo root (its own logging set-up)."""
    return subprocess.run(
        [sys.executable, *flags, "-c", script],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text().splitlines():
        if raw.strip():
            out.append(json.loads(raw))  # fails the test on any line that is not JSON
    return out


async def test_a_full_runs_logs_are_json_with_its_run_attempt_and_worker_and_no_secret(
    settings, store, redis_client, tmp_path
):
    _, key = await store.users.create_key("alice")
    env = {"ANTHROPIC_API_KEY": PROVIDER_CANARY}
    workers: list[WorkerProc] = []
    apis: list[ApiProc] = []
    try:
        apis.append(await start_api(settings, tmp_path, "api", **env))
        for name in ("w1", "w2"):
            workers.append(await start_worker(settings, name, tmp_path, **env))
        async with httpx.AsyncClient(
            base_url=apis[0].url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            # Given a run that starts on one worker
            resp = await client.post(
                "/runs",
                json={"input": "x", "agent": "ticker", "params": {"count": 30, "interval_ms": 100}},
            )
            run_id = resp.json()["run_id"]
            meta = Keys.from_settings(settings).run_meta(run_id)
            # (the owner is recorded in Redis with the run's first events)
            await wait_for(lambda: redis_client.hget(meta, "owner"), timeout=20)
            owner_name = (await redis_client.hget(meta, "owner")).decode()
            owner = next(w for w in workers if w.name == owner_name)
            # When that worker is paused past its lease, the other takes the run over
            owner.signal(signal.SIGSTOP)

            async def moved() -> bool:
                return bool((await client.get(f"/runs/{run_id}")).json()["attempts"] >= 2)

            await wait_for(moved, timeout=20)
            owner.signal(signal.SIGCONT)
            await wait_status(client, run_id, "succeeded", timeout=30)
            await wait_for(lambda: _logged(owner, "lease_lost"), timeout=20)
            # And a request with a bad key arrives, with a request id
            refused = await client.get(
                "/runs",
                headers={"Authorization": f"Bearer {BAD_KEY_CANARY}", "X-Request-ID": "req-42"},
            )
            assert refused.status_code == 401
            assert refused.headers["x-request-id"] == "req-42"
    finally:
        await stop_all(workers)
        for api in apis:
            api.proc.terminate()
            await api.proc.wait()

    # Then every line of every process is JSON and no secret is in any of them
    logs = {w.name: json_lines(w.log_path) for w in workers}
    logs["api"] = json_lines(apis[0].log_path)
    for path in tmp_path.glob("*.log"):
        text = path.read_text()
        assert PROVIDER_CANARY not in text
        assert BAD_KEY_CANARY not in text
        assert "CANARY" not in text
    # And the run's lines all name the one run, the worker, and (once claimed) the attempt
    run_lines = [(name, line) for name, lines in logs.items() for line in lines if "run_id" in line]
    assert {line["run_id"] for _, line in run_lines} == {run_id}
    for name, line in run_lines:
        if name == "api":
            continue
        assert line.get("worker") == name, line
        if line["event"] not in BEFORE_ATTEMPT:
            assert isinstance(line.get("attempt"), int), line
    events = {(name, line["event"], line.get("attempt")) for name, line in run_lines}
    other = next(w.name for w in workers if w.name != owner_name)
    assert (owner_name, "run_claimed", 1) in events
    assert (owner_name, "lease_lost", 1) in events
    assert (other, "run_claimed", 2) in events
    assert (other, "run_finished", 2) in events
    # And uvicorn's own lines went through the same JSON pipeline
    assert any(line.get("logger", "").startswith("uvicorn") for line in logs["api"])
    # And the API's request lines carry the request id
    refusals = [line for line in logs["api"] if line["event"] == "api_key_refused"]
    assert refusals, logs["api"]
    assert all(line.get("request_id") == "req-42" for line in refusals)


async def _logged(proc: WorkerProc, event: str) -> bool:
    for line in proc.log().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == event:
            return True
    return False


def test_secrets_are_redacted_by_key_and_by_shape_at_any_depth() -> None:
    line = redact(
        None,
        "info",
        {
            "event": "call_failed",
            "authorization": "Bearer abc",
            "stream_token": "t0k3n",
            "input_tokens": 12,
            "detail": f"upstream said: invalid x-api-key {PROVIDER_CANARY}",
            "request": {"headers": {"Authorization": "x"}, "url": f"/runs?k={BAD_KEY_CANARY}"},
            "args": ["Bearer abcdefghijklmnop", 3],
        },
    )
    assert line["authorization"] == REDACTED
    assert line["stream_token"] == REDACTED
    assert line["input_tokens"] == 12  # usage figures are not secrets
    assert line["detail"] == f"upstream said: invalid x-api-key {REDACTED}"
    assert line["request"]["headers"]["Authorization"] == REDACTED
    assert line["request"]["url"] == f"/runs?k={REDACTED}"
    assert line["args"] == [REDACTED, 3]
    assert "lr_ab12cd34" in scrub("key lr_ab12cd34 revoked")  # a key's public id stays


def test_library_and_warning_lines_become_redacted_json(tmp_path: Path) -> None:
    script = (
        "import logging, warnings\n"
        "from shared import logs\n"
        "logs.configure(json=True)\n"
        f"logging.getLogger('asyncpg').warning('lost connection, Bearer {BAD_KEY_CANARY}')\n"
        "warnings.warn('a deprecation', DeprecationWarning, stacklevel=1)\n"
        "try:\n"
        f"    raise RuntimeError('{PROVIDER_CANARY}')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('redis').exception('failed')\n"
    )
    done = run_python(script, "-W", "always")
    lines = [json.loads(raw) for raw in done.stderr.splitlines() if raw.strip()]
    assert [line["logger"] for line in lines] == ["asyncpg", "py.warnings", "redis"]
    assert "CANARY" not in done.stderr
    assert "RuntimeError" in lines[2]["exception"]


def test_info_lines_in_a_loop_are_written_together_in_order_and_the_hot_path_matches(
    tmp_path: Path,
) -> None:
    # Given a process whose stderr counts its writes
    script = (
        "import asyncio, json, sys, structlog\n"
        "from shared import logs\n"
        "logs.configure(json=True)\n"
        "writes = []\n"
        "real = sys.stderr.buffer.write\n"
        "class Counting:\n"
        "    def __getattr__(self, name): return getattr(sys.__stderr__.buffer, name)\n"
        "    def write(self, b): writes.append(b); return real(b)\n"
        "class Err:\n"
        "    buffer = Counting()\n"
        "    def write(self, s): return sys.__stderr__.write(s)\n"
        "    def flush(self): sys.__stderr__.flush()\n"
        "sys.stderr = Err()\n"
        "log = structlog.get_logger('longrun.worker')\n"
        "async def main():\n"
        "    structlog.contextvars.bind_contextvars(run_id='r1', attempt=2, worker='w')\n"
        "    log.info('run_claimed', agent='ticker', reclaimed=False)\n"
        "    logs.info_line('longrun.worker', 'run_claimed', agent='ticker', reclaimed=False,\n"
        f"                   detail='Bearer {BAD_KEY_CANARY}')\n"
        "    log.warning('lease_lost', stage='run')\n"
        "    log.info('after')\n"
        "    await asyncio.sleep(0)\n"
        "    print(len(writes), file=sys.__stdout__)\n"
        "asyncio.run(main())\n"
    )
    # When, within one round of the loop, it logs two info lines (one by the hot path), a
    # warning and another info line
    done = run_python(script)
    lines = [json.loads(raw) for raw in done.stderr.splitlines() if raw.strip()]
    # Then the lines keep their order; the warning went out at once with the info lines before
    # it, the last info line at the end of the round: two writes, not four
    assert [line["event"] for line in lines] == [
        "run_claimed",
        "run_claimed",
        "lease_lost",
        "after",
    ]
    assert done.stdout.strip() == "2"
    # And the hot path's line is the structlog line, with its secret redacted
    slow, fast = lines[0], lines[1]
    assert fast.pop("detail") == REDACTED
    assert "CANARY" not in done.stderr
    for line in (slow, fast):
        assert line.pop("timestamp").endswith("Z")
    assert slow == fast


def test_a_loop_closed_with_a_flush_due_does_not_hold_back_the_next_loops_lines() -> None:
    # Given a process whose first event loop logs an info line and stops before its flush runs
    script = (
        "import asyncio, structlog\n"
        "from shared import logs\n"
        "logs.configure(json=True)\n"
        "log = structlog.get_logger('t')\n"
        "loop = asyncio.new_event_loop()\n"
        "async def first():\n"  # logs in the loop's last round: the flush would be the next
        "    asyncio.get_running_loop().call_soon(lambda: log.info('first'))\n"
        "loop.run_until_complete(first())\n"
        "loop.close()\n"
        "async def second():\n"
        "    log.info('second')\n"
        "    await asyncio.sleep(0.05)\n"
        "asyncio.run(second())\n"
        "import os; os._exit(0)\n"  # no exit flush: only what the loop wrote is there
    )
    # When a second loop logs and runs on
    done = run_python(script)
    # Then the second loop wrote its line itself (with the first one, still pending until then)
    events = [json.loads(raw)["event"] for raw in done.stderr.splitlines() if raw.strip()]
    assert "second" in events
    assert events == ["first", "second"]
