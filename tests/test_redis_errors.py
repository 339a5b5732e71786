"""Redis errors the code does not expect, from a real server: a Redis Cluster node answers
`MOVED` to a client that is not cluster-aware (a deployment pointed at a cluster by mistake).
Requests are refused 503 with `Retry-After` and a log line, never a 500, and a worker still
drains and exits on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from shared.config import Settings
from shared.redis.keys import Keys
from shared.store import NewRun, Store
from tests.helpers import wait_for
from tests.procs import start_worker, stop_all
from tests.redis_cluster import moved_node

pytestmark = pytest.mark.timeout(90)


def assert_refused_503(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    body = resp.json()
    assert body["error"] == "unavailable"
    assert body["request_id"] == resp.headers["x-request-id"]


async def test_requests_meeting_moved_answer_503_with_retry_after_and_a_log_line(
    settings: Settings, store: Store, api_factory: Any, tmp_path: Path
) -> None:
    # Given an API pointed at a cluster node that answers MOVED for every key
    async with moved_node(tmp_path) as url:
        srv = await api_factory(settings.with_(redis_url=url))
        _, key = await store.users.create_key("alice")
        run = await store.submits.insert_run(
            NewRun("alice", "ticker", "x", {}, {}), max_in_flight=1_000_000
        )
        # When an authenticated client lists, reads and submits runs
        with structlog.testing.capture_logs() as logs:
            async with httpx.AsyncClient(
                base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
            ) as c:
                answers = [
                    await c.get("/runs"),
                    await c.get(f"/runs/{run.run_id}"),
                    await c.post("/runs", json={"input": "x", "agent": "ticker"}),
                    await c.post("/runs", json={"input": "x", "thread_id": "t1"}),
                ]
        await srv.stop()
    # Then each is a 503 with Retry-After and the JSON error, and each is logged once
    for resp in answers:
        assert_refused_503(resp)
    refused = [e for e in logs if e["event"] == "redis_error"]
    assert len(refused) == len(answers)
    assert {e["reply"] for e in refused} == {"MOVED"}
    assert not [e for e in logs if e["event"] == "unhandled_error"]


async def test_a_submit_whose_queue_answers_moved_is_a_503_not_a_type_error(
    settings: Settings, store: Store, api_factory: Any, tmp_path: Path
) -> None:
    # Given a node that holds the switches, the key epoch and alice's rate bucket, but not the
    # queue (its XLEN and XADD answer MOVED)
    keys = Keys.from_settings(settings)
    local = [
        keys.key_epoch,
        keys.paused,
        keys.submit_bucket("alice"),
    ]
    async with moved_node(tmp_path, local) as url:
        srv = await api_factory(settings.with_(redis_url=url))
        _, key = await store.users.create_key("alice")
        with structlog.testing.capture_logs() as logs:
            async with httpx.AsyncClient(
                base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
            ) as c:
                listed = await c.get("/runs")
                # When alice submits alone (a thread) and grouped (no thread)
                alone = await c.post("/runs", json={"input": "x", "thread_id": "t1"})
                grouped = await c.post("/runs", json={"input": "x", "agent": "ticker"})
        await srv.stop()
    # Then Postgres-only reads still work and both submits are refused 503, nothing stored
    assert listed.status_code == 200
    assert_refused_503(alone)
    assert_refused_503(grouped)
    assert not [e for e in logs if e["event"] == "unhandled_error"]
    assert (await store.runs.list_runs("alice", limit=10)) == []


async def test_a_worker_meeting_moved_still_drains_and_exits_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a worker on a node that holds its queue but not its heartbeat keys
    keys = Keys.from_settings(settings)
    async with moved_node(tmp_path, [keys.queue]) as url:
        s = settings.with_(redis_url=url, drain_seconds=2.0)
        proc = await start_worker(s, "w-moved", tmp_path)
        try:

            async def meeting_moved() -> bool:
                # started, and one of its calls refused (not only a SIGTERM before any call)
                return "worker_started" in proc.log() and '"redis_error"' in proc.log()

            await wait_for(meeting_moved, timeout=30, interval=0.1)
            # When it is told to stop
            proc.signal(signal.SIGTERM)
            started = time.monotonic()
            code = await proc.wait(timeout=s.drain_seconds + 10)
            took = time.monotonic() - started
        finally:
            await stop_all([proc])
    # Then it exits cleanly within the drain bound
    assert code == 0, proc.log()[-3000:]
    assert took < s.drain_seconds + 5
    assert "worker_stopped" in proc.log()
