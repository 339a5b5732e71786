"""`longrun dev`: the whole platform on one machine, in the foreground, until Ctrl-C.

It finds Redis and Postgres (the configured `REDIS_URL`/`DATABASE_URL` when they answer, else
embedded ones from `cli.embedded` with data under `.longrun/`), creates the database if the
server lacks it, migrates, creates a dev API key, then runs `supervisord.conf` (the API and
`--workers` worker processes) as a child and prints how to use it. On SIGINT or SIGTERM it stops
supervisord (which drains the workers), then the embedded servers: nothing it started outlives it.

It holds `.longrun/dev.lock` while it runs, reuses the API key of its last start
(`cli.devinfo`), and writes the stack's connection settings to `.longrun/env` (removed when it
stops) so that `longrun status`, `keys`, `submit`... in another shell reach this stack
(`cli.config`). It takes the environment `cli.main` read once and hands URLs to its children by
environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import httpx

import cli.embedded as emb
from cli.config import LOCK_FILE, SOURCE_ROOT, dev_home, redacted, remove_env_file, write_env_file
from cli.devinfo import banner, dev_key, env_values
from cli.exits import Exit
from shared.config import Settings
from shared.errors import ConfigError, LongrunError
from shared.migrate import create_database
from shared.redis.client import url_answers

API_HOST = "127.0.0.1"
PROBE_TIMEOUT = 1.5  # seconds a configured server gets to answer before we embed our own
API_READY_TIMEOUT = 60.0
FORCE_AFTER_SECONDS = 75.0  # the workers' stopwaitsecs in supervisord.conf (60) plus room

PgState = Literal["ok", "missing_database", "down"]


# ---- pure decisions


def supervisord_conf(env: Mapping[str, str], source_root: Path = SOURCE_ROOT) -> Path:
    return Path(env.get("LONGRUN_SUPERVISORD_CONF") or source_root / "supervisord.conf")


def supervisord_args(conf: Path, uid: int) -> list[str]:
    """`-u` names the user we already are: supervisord then has nothing to drop, and as root
    it no longer logs a CRIT "running as root" line on every start."""
    return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf), "-u", str(uid)]


def database_name(url: str) -> str:
    name = unquote(urlsplit(url).path.lstrip("/"))
    if not name:
        raise ConfigError(f"DATABASE_URL names no database: {url}")
    return name


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def child_env(
    base: Mapping[str, str],
    *,
    redis_url: str,
    database_url: str,
    port: int,
    workers: int,
    bin_dir: Path,
) -> dict[str, str]:
    """The environment of every child: the resolved URLs, supervisord.conf's variables, and
    this interpreter's bin directory first on PATH so `longrun` is the one we run."""
    env = dict(base)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        LONGRUN_API_HOST=API_HOST,
        LONGRUN_API_PORT=str(port),
        LONGRUN_WORKERS=str(workers),
        PATH=os.pathsep.join(p for p in (str(bin_dir), base.get("PATH", "")) if p),
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One stream-token secret for every API process of this dev run, so `events_url`s stay
    # valid across an API restart by supervisord.
    env.setdefault("LONGRUN_STREAM_TOKEN_SECRET", secrets.token_urlsafe(32))
    return env


# ---- probing the configured servers


def redis_answers(url: str, timeout: float = PROBE_TIMEOUT, mode: str = "auto") -> bool:
    """True if the Redis at `url` answers PING (a cluster: its slot map loads; Sentinel: the
    primary it names answers); False if nothing (usable) listens there. A Redis that answers
    but refuses us is a configuration error, not a reason to embed."""
    return url_answers(url, timeout, shown_as=redacted(url), mode=mode)


async def _postgres_state(url: str, connect_timeout: float) -> PgState:
    try:
        conn = await asyncpg.connect(url, timeout=connect_timeout)
    except asyncpg.InvalidCatalogNameError:
        return "missing_database"
    except (OSError, asyncpg.CannotConnectNowError):
        return "down"
    except asyncpg.PostgresError as exc:
        raise ConfigError(f"Postgres at {redacted(url)} refused us: {exc}") from exc
    await conn.close()
    return "ok"


def postgres_state(url: str, timeout: float = PROBE_TIMEOUT) -> PgState:
    return asyncio.run(_postgres_state(url, timeout))


async def _create_database(url: str) -> None:
    name = database_name(url)
    conn = await asyncpg.connect(with_database(url, "postgres"), timeout=10)
    try:
        await create_database(conn, name)
    finally:
        await conn.close()


def ensure_database(url: str) -> None:
    """Create the database `url` names if its server lacks it."""
    if postgres_state(url, timeout=10) == "missing_database":
        asyncio.run(_create_database(url))


# ---- the servers


def lock_home(home: Path) -> IO[str]:
    """Hold `home/dev.lock` for as long as the returned file stays open. One `longrun dev` per
    data directory: a second one would take the first one's servers for leftovers and stop
    them."""
    home.mkdir(parents=True, exist_ok=True)
    handle = (home / LOCK_FILE).open("a+")
    try:
        _flock_soon(handle)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(
            f"another `longrun dev` (pid {holder}) is using {home}: stop it first, "
            "or give this one its own LONGRUN_DEV_DIR"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _flock_soon(handle: IO[str], patience: float = 0.5) -> None:
    """Take the lock, waiting out another command's momentary look (`cli.config.dev_running`)
    but not another `longrun dev`."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@dataclass
class Backends:
    redis_url: str = ""
    database_url: str = ""
    redis_desc: str = ""
    postgres_desc: str = ""
    servers: tuple[emb.Server, ...] = ()
    lock: IO[str] | None = None
    home: Path | None = None

    def own(self, home: Path) -> None:
        if self.lock is None:
            self.lock = lock_home(home)
            self.home = home

    def stop(self) -> None:
        # The settings file goes first: nobody should reach for servers that are stopping.
        if self.home is not None:
            remove_env_file(self.home)
        # Reverse start order; each server gets its own clean shutdown.
        for server in reversed(self.servers):
            emb.stop(server)
        self.servers = ()
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _provide_redis(settings: Settings, force: bool, home: Path, into: Backends) -> None:
    if not force and redis_answers(settings.redis_url, mode=settings.redis_mode):
        into.redis_url = settings.redis_url
        into.redis_desc = f"{redacted(settings.redis_url)} (configured)"
        return
    if not force:
        say(f"longrun: no Redis answers at {redacted(settings.redis_url)}; starting one")
    server = emb.start_redis(home / "redis")
    into.servers = (*into.servers, server)
    into.redis_url = server.url
    into.redis_desc = f"{server.url} (embedded redis-server 6.2, data in {home / 'redis'})"


def _provide_postgres(
    settings: Settings, env: Mapping[str, str], force: bool, home: Path, into: Backends
) -> None:
    url = settings.database_url
    if not force:
        state = postgres_state(url)
        if state != "down":
            if state == "missing_database":
                say(f"longrun: creating database {database_name(url)!r}")
                asyncio.run(_create_database(url))
            into.database_url = url
            into.postgres_desc = f"{redacted(url)} (configured)"
            return
        say(f"longrun: no Postgres answers at {redacted(url)}; starting one")
    server = emb.start_postgres(home / "postgres", env=env)
    into.servers = (*into.servers, server)
    into.database_url = emb.pg_url(server.port)
    ensure_database(into.database_url)
    into.postgres_desc = (
        f"{into.database_url} (embedded PostgreSQL 18, data in {home / 'postgres'})"
    )


# ---- children


def _longrun(env: Mapping[str, str]) -> str:
    found = shutil.which("longrun", path=env.get("PATH"))
    if found is None:
        raise ConfigError("the `longrun` command is not installed: run `pip install -e .`")
    return found


def _run_step(args: list[str], env: Mapping[str, str], what: str) -> str:
    done = subprocess.run(
        args, env=dict(env), capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise LongrunError(f"{what} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


class _StoppedEarly(Exception):
    """A stop was requested before the API first answered."""


def _wait_for_api(
    url: str, supervisor: subprocess.Popen[bytes], stopper: _Stopper, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if stopper.stopping:
                raise _StoppedEarly
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if supervisor.poll() is not None:
                raise LongrunError(f"supervisord exited with {supervisor.returncode}")
            if time.monotonic() > deadline:
                raise LongrunError(f"the API did not answer at {url}/health within {timeout:.0f}s")
            time.sleep(0.2)


def say(text: str, *, err: bool = False) -> None:
    """Print, shrugging off a closed stdout (a `| tee` that Ctrl-C killed first): stopping must
    go on whatever happened to the terminal."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (lives until exit)


class _Stopper:
    """Signal handler: the first SIGINT/SIGTERM asks supervisord to stop (workers drain); the
    next one kills the whole tree at once."""

    def __init__(self, supervisor: subprocess.Popen[bytes]) -> None:
        self.supervisor = supervisor
        self.by_user = False
        self.stopping = False
        self.forced = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.force()
            return
        self.by_user = True
        self.stop("\nlongrun: stopping (workers drain first; Ctrl-C again to force)")

    def stop(self, why: str) -> None:
        self.stopping = True
        self._signal(signal.SIGTERM)  # before printing: a dead terminal must not block this
        say(why)

    def force(self) -> None:
        if self.forced:
            return
        self.forced = True
        for pid in emb.descendants(self.supervisor.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._signal(signal.SIGKILL)
        say("longrun: forced stop")

    def _signal(self, sig: signal.Signals) -> None:
        if self.supervisor.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.supervisor.send_signal(sig)


def _wait_watching(
    supervisor: subprocess.Popen[bytes], stopper: _Stopper, servers: tuple[emb.Server, ...]
) -> int:
    """supervisord's exit code; an embedded server that dies meanwhile stops everything."""
    while True:
        try:
            return supervisor.wait(1.0)
        except subprocess.TimeoutExpired:
            dead = next((srv for srv in servers if srv.process.poll() is not None), None)
            if dead is not None and not stopper.stopping:
                stopper.stop(
                    f"longrun: embedded {dead.name} exited ({dead.process.returncode}), see "
                    f"{dead.log_path}; stopping"
                )


def _supervise(
    env: Mapping[str, str], conf: Path, url: str, text: str, servers: tuple[emb.Server, ...]
) -> int:
    supervisor = subprocess.Popen(
        supervisord_args(conf, os.getuid()),
        env=dict(env),
        cwd=str(conf.parent),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=emb.die_with_parent(signal.SIGTERM),  # safe: no threads here
    )
    stopper = _Stopper(supervisor)
    signal.signal(signal.SIGINT, stopper)
    signal.signal(signal.SIGTERM, stopper)
    try:
        _wait_for_api(url, supervisor, stopper, API_READY_TIMEOUT)
        say(text)
        code = _wait_watching(supervisor, stopper, servers)
    except _StoppedEarly:
        code = supervisor.wait()
    except BaseException:
        if not stopper.stopping:
            stopper.stop("longrun: stopping")
        try:
            supervisor.wait(FORCE_AFTER_SECONDS)
        except subprocess.TimeoutExpired:
            stopper.force()
            supervisor.wait(5)
        raise
    clean = (
        stopper.by_user and code == 0 and not any(srv.process.poll() is not None for srv in servers)
    )
    return 0 if clean else max(code, 1)


def _stop_strays(backends: Backends, grace: float) -> None:
    """Stop anything of ours still running besides the servers: programs a crashed supervisord
    left behind are adopted by us (we are their subreaper), so they are our descendants."""
    keep: set[int] = set()
    for server in backends.servers:
        keep |= {server.pid, *emb.descendants(server.pid)}
    strays = [pid for pid in emb.descendants(os.getpid()) if pid not in keep]
    if strays:
        say(f"longrun: stopping {len(strays)} leftover process(es)")
        emb.terminate_all(strays, grace)


# ---- the command


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((API_HOST, port))
        except OSError as exc:
            raise ConfigError(f"port {port} on {API_HOST} is taken ({exc}); use --port") from exc


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _announce(
    settings: Settings,
    backends: Backends,
    home: Path,
    *,
    env: Mapping[str, str],
    longrun: str,
    url: str,
    workers: int,
) -> str:
    """Reuse or make the dev key, write `.longrun/env`, and return the banner."""
    key, created = asyncio.run(dev_key(settings, home))
    env_file = write_env_file(home, env_values(settings, url, key))
    on_path = shutil.which("longrun", path=env.get("PATH"))
    bin_dir = None if on_path and Path(on_path).samefile(longrun) else Path(longrun).parent
    return banner(
        url=url,
        key=key,
        key_created=created,
        settings=settings,
        redis_desc=backends.redis_desc,
        postgres_desc=backends.postgres_desc,
        workers=workers,
        env_file=env_file,
        bin_dir=bin_dir,
    )


def run(env: Mapping[str, str], *, embedded: bool, port: int, workers: int) -> int:
    """Run everything until SIGINT/SIGTERM; the exit code is 0 after a requested, clean stop.
    `env` is the process environment as the user set it (never `.longrun/env`)."""
    # Until supervisord runs, SIGINT and SIGTERM unwind (and embedded servers get stopped), even
    # where SIGINT came in ignored (a shell's `&` without job control).
    previous = (
        signal.signal(signal.SIGTERM, _raise_interrupt),
        signal.signal(signal.SIGINT, _raise_interrupt),
    )
    emb.become_subreaper()
    backends = Backends()
    grace = Settings.drain_seconds + 5
    try:
        settings = Settings.from_env(env)
        grace = settings.drain_seconds + 5
        home = dev_home(env)
        backends.own(home)  # one `longrun dev` per folder, embedded servers or not
        _check_port_free(port)
        _provide_redis(settings, embedded, home, backends)
        _provide_postgres(settings, env, embedded, home, backends)
        children = child_env(
            env,
            redis_url=backends.redis_url,
            database_url=backends.database_url,
            port=port,
            workers=workers,
            bin_dir=Path(sys.executable).parent,
        )
        longrun = _longrun(children)
        _run_step([longrun, "migrate"], children, "longrun migrate")
        url = f"http://{API_HOST}:{port}"
        resolved = Settings.from_env(children)
        text = _announce(
            resolved, backends, home, env=env, longrun=longrun, url=url, workers=workers
        )
        return _supervise(children, supervisord_conf(env), url, text, backends.servers)
    except KeyboardInterrupt:
        return 130
    except LongrunError as exc:
        say(f"longrun dev: {exc.detail or exc}", err=True)
        return Exit.USAGE if isinstance(exc, ConfigError) else Exit.NOT_SUCCEEDED
    finally:
        _stop_strays(backends, grace)
        backends.stop()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
