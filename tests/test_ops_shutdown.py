"""API shutdown with open event streams: SIGTERM to a real `longrun api` process holding 100
streams on running runs. It fails readiness, ends every stream with a reconnect hint (a
`retry:` field and a comment, no `id`), and exits within uvicorn's graceful period; every
client resumes with Last-Event-ID on a second API process, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from tests.conftest import free_port
from tests.helpers import Got, assert_gapless_ticker, submit, wait_for, wait_status
from tests.procs import ROOT, WorkerProc, settings_env, start_worker, stop_all

RUNS = 25
STREAMS_PER_RUN = 4  # 100 streams
TICKS = 60
GRACE_SECONDS = 10.0  # timeout_graceful_shutdown in `longrun api`


@dataclass
class ApiProc:
    proc: asyncio.subprocess.Process
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def start_api(settings: Settings, tmp: Path, name: str, **extra: str) -> ApiProc:
    """A real `longrun api` process (JSON logs to `tmp/<name>.log`), once it is ready."""
    port = free_port()
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "api",
            "--port",
            str(port),
            env=settings_env(
                settings,
                LONGRUN_MAX_SSE_PER_USER="1000",
                LONGRUN_STREAM_TOKEN_SECRET="shared-between-instances-" + "x" * 32,
                **extra,
            ),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(ROOT),
        )
    api = ApiProc(proc, f"http://127.0.0.1:{port}", log_path)

    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"api {name} exited: {api.log()}")
        try:
            async with httpx.AsyncClient(timeout=1) as c:
                return (await c.get(f"{api.url}/ready")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(ready, timeout=30, interval=0.1)
    return api


@dataclass
class Follower:
    """One SSE client: reads a run's stream from one server, records events and what came
    after the last one, then resumes on another server."""

    run_id: str
    events: list[Got] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  # raw lines after the last event
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, client: httpx.AsyncClient, after: str | None) -> int:
        headers = {"Last-Event-ID": after} if after else {}
        self.tail = []
        block: list[str] = []
        with contextlib.suppress(httpx.TransportError):
            async with client.stream("GET", f"/runs/{self.run_id}/events", headers=headers) as resp:
                if resp.status_code != 200:
                    return resp.status_code
                async for line in resp.aiter_lines():
                    if line:
                        block.append(line)
                        continue
                    self._frame(block)
                    block = []
                self._frame(block)
                return 200
        return 0  # the connection broke

    def _frame(self, lines: list[str]) -> None:
        fields: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            if name:
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            self.events.append(Got(fields.get("id"), fields["event"], json.loads(fields["data"])))
            self.tail = []
            self.started.set()
        else:
            self.tail.extend(lines)


@pytest.mark.slow
async def test_sigterm_with_100_open_streams_hands_every_client_to_another_instance(
    settings, store, tmp_path
):
    _, key = await store.users.create_key("alice")
    auth = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    s = settings.with_(concurrency=RUNS)
    workers: list[WorkerProc] = []
    apis: list[ApiProc] = []
    try:
        first, second = await asyncio.gather(
            start_api(s, tmp_path, "api-a"), start_api(s, tmp_path, "api-b")
        )
        apis += [first, second]
        workers.append(await start_worker(s, "w1", tmp_path))
        async with (
            httpx.AsyncClient(base_url=first.url, headers=auth, timeout=30, limits=limits) as a,
            httpx.AsyncClient(base_url=second.url, headers=auth, timeout=30, limits=limits) as b,
        ):
            # Given 25 running ticker runs, each followed by 4 clients on the first API
            run_ids = [
                await submit(a, agent="ticker", params={"count": TICKS, "interval_ms": 100})
                for _ in range(RUNS)
            ]
            for rid in run_ids:
                await wait_status(a, rid, "running")
            followers = [Follower(rid) for rid in run_ids for _ in range(STREAMS_PER_RUN)]
            reads = [asyncio.create_task(f.read(a, None)) for f in followers]
            await asyncio.wait_for(asyncio.gather(*(f.started.wait() for f in followers)), 20)
            assert not any(t.done() for t in reads), "the runs were still going"

            # When the first API gets SIGTERM
            t0 = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            codes = await asyncio.wait_for(asyncio.gather(*reads), GRACE_SECONDS)
            streams_closed = time.monotonic() - t0
            code = await asyncio.wait_for(first.proc.wait(), GRACE_SECONDS)
            exited = time.monotonic() - t0

            # Then it exits cleanly within the grace period, its streams ended well before
            assert code == 0, first.log()[-3000:]
            assert exited < GRACE_SECONDS
            assert streams_closed < GRACE_SECONDS / 2, streams_closed
            # And every stream ended properly, with the reconnect hint and no id after the
            # last event
            assert codes == [200] * len(followers)
            for f in followers:
                assert f.events[-1].data["type"] not in ("done", "error"), "the run still ran"
                assert any(line.startswith("retry:") for line in f.tail), f.tail
                assert any(line.startswith(": server shutting down") for line in f.tail)
                assert not any(line.startswith("id:") for line in f.tail)

            # When every client resumes on the second API with its Last-Event-ID
            resumed = await asyncio.gather(*(f.read(b, f.events[-1].id) for f in followers))
            # Then each got the rest of its run: gapless, no duplicate, one `done`
            assert resumed == [200] * len(followers)
            for f in followers:
                assert_gapless_ticker(f.events, TICKS)
    finally:
        await stop_all(workers)
        for api in apis:
            if api.proc.returncode is None:
                api.proc.kill()
                await api.proc.wait()
