"""Worker and API processes for fault tests: started as real `longrun worker` / `longrun api`
subprocesses so they can be killed with SIGKILL, paused with SIGSTOP and drained with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import httpx

from shared.config import Settings

# Settings field -> environment variable, for the fields tests change.
ENV_NAMES = {
    "redis_url": "REDIS_URL",
    "database_url": "DATABASE_URL",
    "key_prefix": "LONGRUN_KEY_PREFIX",
    "queue": "LONGRUN_QUEUE",
    "group": "LONGRUN_GROUP",
    "concurrency": "LONGRUN_CONCURRENCY",
    "lease_seconds": "LONGRUN_LEASE_SECONDS",
    "drain_seconds": "LONGRUN_DRAIN_SECONDS",
    "max_attempts": "LONGRUN_MAX_ATTEMPTS",
    "events_ttl_seconds": "LONGRUN_EVENTS_TTL_SECONDS",
    "reconcile_seconds": "LONGRUN_RECONCILE_SECONDS",
    "pg_pool_max": "LONGRUN_PG_POOL_MAX",
    "redis_socket_timeout": "LONGRUN_REDIS_TIMEOUT",
    "run_timeout_seconds": "LONGRUN_RUN_TIMEOUT_SECONDS",
    "max_events_per_run": "LONGRUN_MAX_EVENTS_PER_RUN",
    "sse_ping_seconds": "LONGRUN_SSE_PING_SECONDS",
    "max_sse_per_user": "LONGRUN_MAX_SSE_PER_USER",
    "submit_rate_per_second": "LONGRUN_SUBMIT_RATE_PER_SECOND",
    "submit_burst": "LONGRUN_SUBMIT_BURST",
}
ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGRUN_", "ANTHROPIC_"))}
    known = {f.name for f in fields(settings)}
    for name, var in ENV_NAMES.items():
        assert name in known, name
        env[var] = str(getattr(settings, name))
    if settings.agent_modules:
        env["LONGRUN_AGENTS"] = ",".join(settings.agent_modules)
    env["LONGRUN_LOG_JSON"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class WorkerProc:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def start_worker(settings: Settings, name: str, tmp: Path, **extra: str) -> WorkerProc:
    log_path = tmp / f"{name}.log"
    out = log_path.open("wb")
    env = settings_env(settings, LONGRUN_WORKER_NAME=name, **extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "worker",
        env=env,
        stdout=out,
        stderr=asyncio.subprocess.STDOUT,
        cwd=str(ROOT),
    )
    out.close()
    return WorkerProc(name, proc, log_path)


async def stop_all(procs: list[WorkerProc]) -> None:
    for p in procs:
        if p.proc.returncode is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.proc.kill()
            except ProcessLookupError:
                pass
            await p.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ApiProc:
    """`longrun api` on a fixed port: it can be killed and started again on the same port."""

    def __init__(self, settings: Settings, tmp: Path, port: int, **extra: str) -> None:
        self.settings = settings
        self.tmp = tmp
        self.port = port
        self.extra = extra
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.tmp / f"api-{self.port}.log"

    async def start(self, timeout: float = 30.0) -> None:
        out = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=settings_env(self.settings, **self.extra),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(ROOT),
        )
        out.close()
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(
                        f"the API exited {self.proc.returncode}: {self.log()[-2000:]}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get("/health")).status_code == 200:
                        return
                if loop.time() > deadline:
                    raise TimeoutError(f"the API did not start in {timeout}s: {self.log()[-2000:]}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 0.05)

    async def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
