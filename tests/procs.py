"""Worker processes for fault tests: started as real `longrun worker` subprocesses so they can
be killed with SIGKILL, paused with SIGSTOP and drained with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path

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
