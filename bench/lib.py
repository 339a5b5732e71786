"""The bench harness: processes, ports, percentiles, tables, versions and JSON results.

Every benchmark script is `python -m bench.NAME [--smoke]`. It measures longrun and its peer in
the same run (the machine drifts by ±20%, so only same-run ratios mean anything), prints a table
with the ratios, and appends one JSON line to `bench/out/NAME.jsonl` (or `$BENCH_OUT_DIR`).
`--smoke` shrinks every count so that the test suite can run each script in seconds.

Everything runs on 127.0.0.1; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
ENVS = BENCH_DIR / ".envs"
PEERS = BENCH_DIR / "peers"
MAIN_PY = sys.executable
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def out_dir() -> Path:
    d = Path(os.environ.get("BENCH_OUT_DIR") or BENCH_DIR / "out")
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- command line ------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny counts: checks the script runs")
    p.add_argument("--skip-peers", action="store_true", help="measure longrun only")
    return p


# -- numbers -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of a list of durations in seconds."""
    ms = [x * 1000.0 for x in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


def median(values: Iterable[float]) -> float:
    v = [x for x in values if x == x]
    return statistics.median(v) if v else float("nan")


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n## {title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


# -- versions and results ----------------------------------------------------------------------


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def redis_server_version() -> str:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    try:
        return str(r.info("server")["redis_version"])
    finally:
        r.close()


def peer_versions(env: str, packages: Sequence[str]) -> dict[str, str]:
    py = peer_python(env)
    if py is None:
        return {}
    code = (
        "import json,importlib.metadata as m\n"
        f"print(json.dumps({{p: m.version(p) for p in {list(packages)!r}}}))"
    )
    res = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=30)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def versions() -> dict[str, Any]:
    pkgs = [
        "redis",
        "hiredis",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pydantic",
        "sse-starlette",
        "asyncpg",
        "httpx",
    ]
    return {
        "python": platform.python_version(),
        "redis_server": redis_server_version(),
        "main_venv": {p: _pkg(p) for p in pkgs},
        "nproc": os.cpu_count(),
    }


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def record(name: str, result: dict[str, Any], *, smoke: bool) -> Path:
    """Append one JSON line (result + versions + time + load) to out/NAME.jsonl."""
    line = {
        "bench": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "smoke": smoke,
        "load1_after": load_avg(),
        "versions": versions(),
        **result,
    }
    path = out_dir() / f"{name}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    print(f"\n(result appended to {path})")
    return path


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_python(env: str) -> str | None:
    """The python of a peer venv made by setup_peers.sh, or None when it was not set up."""
    py = ENVS / env / "bin" / "python"
    return str(py) if py.exists() and (ENVS / env / ".ok").exists() else None


def tool(env: str, name: str) -> str:
    return str(ENVS / env / "bin" / name)


def longrun_bin() -> str:
    exe = Path(MAIN_PY).parent / "longrun"
    return str(exe) if exe.exists() else "longrun"


@dataclass
class Proc:
    """A child process in its own session, logging to a file; stopped by its own id."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self) -> Proc:
        logs = out_dir() / "logs"
        logs.mkdir(exist_ok=True)
        self.log = logs / f"{self.name}-{os.getpid()}-{secrets.token_hex(2)}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with self.log.open("wb") as f:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group this Proc started, then SIGKILL it after `timeout`."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Children that outlived their leader (e.g. a server's reloader) share its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in reversed(procs):
            p.stop()


def wait_until(
    pred: Callable[[], bool],
    timeout: float,
    what: str,
    proc: Proc | None = None,
    every: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        time.sleep(every)
    tail = f"\n{proc.tail()}" if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{tail}")


def http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    wait_until(lambda: http_ok(url), timeout, f"{proc.name} at {url}", proc, every=0.1)


def uvicorn_argv(app: str, port: int) -> list[str]:
    """Same settings for every HTTP server we compare: uvloop, httptools, one process."""
    return [
        MAIN_PY,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one when pid is None), in seconds."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _local_ports_to(pid: int, remote_port: int) -> list[int]:
    """Local ports of the established TCP connections `pid` holds to 127.0.0.1:remote_port."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                rport = int(cols[2].rsplit(":", 1)[1], 16)
                if rport == remote_port and cols[3] == "01" and cols[9] in inodes:
                    ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def tcp_connections_to(pid: int, remote_port: int) -> int:
    """Established TCP connections that process `pid` holds to 127.0.0.1:remote_port."""
    return len(_local_ports_to(pid, remote_port))


def redis_client_entries(pid: int) -> list[dict[str, Any]]:
    """CLIENT LIST entries of the Redis connections process `pid` holds (matched to its
    sockets by port)."""
    import redis

    ports = set(_local_ports_to(pid, redis_port()))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        clients = r.client_list()
    finally:
        r.close()
    return [c for c in clients if int(str(c.get("addr", ":0")).rsplit(":", 1)[1]) in ports]


def redis_clients_of(pid: int) -> dict[str, int]:
    """Redis connections held by process `pid`, counted by client name ('-' for a connection
    without a name)."""
    names: dict[str, int] = {}
    for c in redis_client_entries(pid):
        name = str(c.get("name") or "-")
        names[name] = names.get(name, 0) + 1
    return names


def redis_port() -> int:
    from urllib.parse import urlparse

    return urlparse(REDIS_URL).port or 6379


# -- Redis and Postgres scratch space ----------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}_{int(time.time())}_{secrets.token_hex(3)}"


async def delete_keys(pattern: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS_URL)
    n = 0
    try:
        async for key in r.scan_iter(match=pattern, count=1000):
            n += await r.unlink(key)
    finally:
        await r.aclose()
    return n


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh database `longrun_bench_<rand>`, dropped afterwards; yields its URL."""
    import asyncpg

    name = unique("longrun_bench")
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _stop_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_async(coro: Any) -> Any:
    """Run a bench's main coroutine. SIGTERM stops it as Ctrl-C does (the main task cancelled),
    so the `finally` blocks of its stacks still drop their scratch databases and Redis keys and
    stop the processes they started."""
    signal.signal(signal.SIGTERM, _stop_as_interrupt)
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
