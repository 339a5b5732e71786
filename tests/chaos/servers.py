"""Private servers for the fault suite: a Postgres cluster and Redis servers of the suite's own, so
a test can crash, stall, cut back and restart them without touching the shared ones.

- `PostgresCluster`: `initdb` + `pg_ctl` as the `postgres` OS user (the suite runs as root here
  and in CI), on a free port, data in a temporary directory, trust auth, the server's fsync-on
  defaults. One cluster serves a whole session; each test gets a database cloned from a migrated
  template. Faults: `stop_immediate()` (a crash: `pg_ctl stop -m immediate`), `start()` (crash
  recovery), `sigstop()` / `sigcont()` of the postmaster and every backend (a stall).
- `RedisServer`: a `redis-server` per test, with an append-only file (`appendfsync everysec`, as
  production runs) or no persistence at all. Faults: `kill9()`, `restart()` (what the AOF kept),
  `restart_empty()`, and `mark()` + `lose_since_mark()`: killed, its AOF cut back to the size it
  had at the mark, restarted, which is what a host crash does to the writes of the last second
  that `everysec` had not synced yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.conftest import free_port

PG_BIN = Path(os.environ.get("LONGRUN_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
TEMPLATE_DB = "longrun_template"


def _as_pg_user(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, run its tools as the postgres OS user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *cmd]
    return cmd


def postgres_available() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    if not (PG_BIN / "initdb").exists():
        return f"no initdb under {PG_BIN} (set LONGRUN_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return "running as root without a postgres OS user"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


class PostgresCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="lr-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.stopped_pids: list[int] = []

    # -- life cycle (sync: once per session) ------------------------------------------------
    def init(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            _as_pg_user(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",  # initdb's own syncs only; the server keeps fsync on
                ]
            ),
            check=True,
            capture_output=True,
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nport = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
                "shared_buffers = 64MB\n"
                "log_min_messages = warning\n"
            )
        self._pg_ctl_sync("start", "-w", "-t", "60", "-l", str(self.log))

    def destroy(self) -> None:
        self._cont_all()
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl_sync("stop", "-m", "immediate", "-w", "-t", "30")
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl_sync(self, *args: str) -> None:
        subprocess.run(
            _as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
        )

    async def _pg_ctl(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *_as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {out.decode(errors='replace')}")

    # -- addresses ---------------------------------------------------------------------------
    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    # -- faults ------------------------------------------------------------------------------
    async def stop_immediate(self) -> None:
        """A crash: every backend is killed at once, nothing is flushed beyond what was
        committed (the WAL)."""
        await self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")

    async def start(self) -> None:
        """Start (after a crash: recover from the WAL); returns once it accepts connections."""
        await self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log))

    async def sigstop(self) -> int:
        """Freeze the postmaster and every backend (a stall: connections open, no answers).
        Returns how many processes were stopped."""
        pid = self.postmaster_pid()
        assert pid is not None, "postgres is not running"
        os.kill(pid, signal.SIGSTOP)  # first: no new backend is forked after this
        self.stopped_pids = [pid]
        for child in _children_of(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                self.stopped_pids.append(child)
        return len(self.stopped_pids)

    async def sigcont(self) -> None:
        self._cont_all()

    def _cont_all(self) -> None:
        for pid in reversed(self.stopped_pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped_pids = []

    async def ensure_up(self) -> None:
        """After a test that crashed or froze it: running and answering again."""
        self._cont_all()
        if not self.running:
            await self.start()

    # -- databases ---------------------------------------------------------------------------
    async def make_template(self) -> None:
        """A migrated database that each test's database is cloned from (a file copy)."""
        from shared.migrate import migrate

        admin = await asyncpg.connect(self.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.dsn(TEMPLATE_DB))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def create_database(self, name: str) -> str:
        admin = await asyncpg.connect(self.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        return self.dsn(name)

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def xact_commits(self, db: str) -> int:
        """Transactions committed in `db` so far, as the statistics system has them (backends
        report at most about once a second while busy: a lower bound of the work done)."""
        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            value = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", db
            )
        finally:
            await conn.close()
        return int(value or 0)


@dataclass
class AofMark:
    path: Path
    size: int
    at: float


class RedisServer:
    def __init__(self, root: Path, *, aof: bool) -> None:
        self.aof = aof
        self.port = free_port()
        self.dir = root / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc: asyncio.subprocess.Process | None = None
        self.marked: AofMark | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.aof:
            args += [
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--appenddirname",
                "aof",
                # No rewrite during a test: the mark and the cut refer to one incr file.
                "--auto-aof-rewrite-percentage",
                "0",
                # A cut may end mid-command (or mid-MULTI): load what is whole.
                "--aof-load-truncated",
                "yes",
            ]
        else:
            args += ["--appendonly", "no"]
        return args

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            *self._args(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        r = aioredis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    if await r.ping():
                        return
                except Exception:
                    if self.proc.returncode is not None:
                        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"redis-server exited: {log}") from None
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.02)
        finally:
            await r.aclose()

    async def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def restart(self) -> None:
        await self.kill9()
        await self.start()

    async def restart_empty(self) -> None:
        await self.kill9()
        shutil.rmtree(self.dir / "aof", ignore_errors=True)
        await self.start()

    def _incr_file(self) -> Path:
        manifest = (self.dir / "aof" / "appendonly.aof.manifest").read_text()
        incr = [line.split()[1] for line in manifest.splitlines() if line.endswith("type i")]
        assert incr, f"no incr file in the AOF manifest: {manifest!r}"
        return self.dir / "aof" / incr[-1]

    def mark(self) -> AofMark:
        """Remember how much of the AOF is written now: `lose_since_mark` cuts it back here."""
        assert self.aof, "only a Redis with an AOF can lose its last second"
        path = self._incr_file()
        self.marked = AofMark(path, path.stat().st_size, time.monotonic())
        return self.marked

    async def lose_since_mark(self) -> int:
        """Kill, cut the AOF back to the mark, restart. Returns the bytes of writes lost."""
        mark = self.marked
        assert mark is not None, "mark() first"
        await self.kill9()
        assert self._incr_file() == mark.path, "the AOF was rewritten since the mark"
        lost = mark.path.stat().st_size - mark.size
        with mark.path.open("r+b") as f:
            f.truncate(mark.size)
        self.marked = None
        await self.start()
        return lost

    async def stop(self) -> None:
        await self.kill9()
        shutil.rmtree(self.dir, ignore_errors=True)
