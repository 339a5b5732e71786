"""The `longrun` console script of this venv, run as a user runs it: a subprocess with its own
environment, its exit code, stdout and stderr. Async (`longrun`), so a test can serve the API
from its own event loop meanwhile, or blocking (`longrun_sync`) where nothing else runs.

`cli_env` is "another shell": none of the user's REDIS_URL, DATABASE_URL or LONGRUN_* leak in,
and `.longrun/` is the test's own folder (never a developer's running `longrun dev`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.config import Settings
from tests.procs import ROOT, settings_env

LONGRUN = str(Path(sys.executable).parent / "longrun")
LEAKY = ("REDIS_URL", "DATABASE_URL", "LONGRUN_", "ANTHROPIC_")


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def cli_env(dev_dir: Path, settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell; with `settings`, one that names those servers."""
    if settings is not None:
        env = settings_env(settings)
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
    env["LONGRUN_DEV_DIR"] = str(dev_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def longrun(*args: str, env: dict[str, str], timeout: float = 30.0) -> Done:
    proc = await asyncio.create_subprocess_exec(
        LONGRUN,
        *args,
        env=env,
        cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def longrun_sync(*args: str, env: dict[str, str], timeout: float = 30.0) -> Done:
    done = subprocess.run(
        [LONGRUN, *args],
        env=env,
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr)


class Running:
    """A `longrun` command left running: read its stdout as it comes, then interrupt it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen = ""

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Running:
        proc = await asyncio.create_subprocess_exec(
            LONGRUN,
            *args,
            env=env,
            cwd=str(ROOT),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def read_until(self, text: str, timeout: float = 20.0, times: int = 1) -> str:
        """stdout so far, once it holds `text` (`times` times)."""
        assert self.proc.stdout is not None

        async def more() -> None:
            assert self.proc.stdout is not None
            while self.seen.count(text) < times:
                chunk = await self.proc.stdout.read(4096)
                if not chunk:
                    raise AssertionError(f"stdout ended before {text!r}: {self.seen!r}")
                self.seen += chunk.decode()

        await asyncio.wait_for(more(), timeout)
        return self.seen

    async def interrupt(self, timeout: float = 20.0) -> Done:
        """Ctrl-C, then what it printed and its exit code."""
        self.proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        assert self.proc.returncode is not None
        return Done(self.proc.returncode, self.seen + out.decode(), err.decode())

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
