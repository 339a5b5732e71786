"""`.longrun/env`: the settings a running `longrun dev` leaves for the commands of other shells.
They are used while that `longrun dev` runs, never over what the shell set itself, and a file
left by a `longrun dev` that was killed outright is removed, not followed.

(`longrun dev` writing it, end to end, is in tests/test_dev.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from cli import config
from cli.dev import lock_home
from shared.config import Settings
from tests.cli_proc import cli_env, longrun
from tests.conftest import free_port

DEV_FILE = {
    "LONGRUN_URL": "http://127.0.0.1:9001",
    "LONGRUN_API_KEY": "lr_dev",
    "REDIS_URL": "redis://127.0.0.1:9002/0",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:9003/longrun",
    "LONGRUN_KEY_PREFIX": "devprefix",
}


def test_the_file_fills_in_what_the_environment_does_not_set() -> None:
    assert config.merged({}, DEV_FILE) == DEV_FILE
    assert config.merged({"HOME": "/h"}, DEV_FILE)["REDIS_URL"] == DEV_FILE["REDIS_URL"]


def test_a_variable_set_in_the_environment_always_wins() -> None:
    env = {"LONGRUN_KEY_PREFIX": "mine", "LONGRUN_API_KEY": "lr_mine"}
    out = config.merged(env, DEV_FILE)
    assert out["LONGRUN_KEY_PREFIX"] == "mine"
    assert out["LONGRUN_API_KEY"] == "lr_mine"


def test_servers_from_the_shell_are_never_mixed_with_servers_from_the_file() -> None:
    # Given a shell that names its own Redis only
    out = config.merged({"REDIS_URL": "redis://elsewhere:6379/0"}, DEV_FILE)
    # Then neither the file's Postgres nor its key prefix applies; its API settings still do
    assert "DATABASE_URL" not in out
    assert "LONGRUN_KEY_PREFIX" not in out
    assert out["LONGRUN_URL"] == DEV_FILE["LONGRUN_URL"]
    # And the same for the API pair
    api = config.merged({"LONGRUN_URL": "http://prod:8000"}, DEV_FILE)
    assert "LONGRUN_API_KEY" not in api
    assert api["REDIS_URL"] == DEV_FILE["REDIS_URL"]


def test_the_file_is_shell_syntax_that_reads_back_the_same() -> None:
    values = {**DEV_FILE, "DATABASE_URL": "postgresql://u:p'a ss@h:1/d?x=1&y=2"}
    text = config.render_env_file(values)
    assert all(line.startswith(("export ", "#")) for line in text.splitlines())
    assert config.parse_env_file(text) == values


def test_the_api_url_and_key_come_from_options_then_the_environment_then_the_default() -> None:
    env = {"LONGRUN_URL": "http://h:1/", "LONGRUN_API_KEY": "lr_env"}
    assert config.api_target(env) == config.ApiTarget("http://h:1", "lr_env")
    assert config.api_target(env, "http://o:2", "lr_opt") == config.ApiTarget(
        "http://o:2", "lr_opt"
    )
    assert config.api_target({}) == config.ApiTarget("http://127.0.0.1:8000", None)


@pytest.fixture
def dev_dir(tmp_path: Path) -> Path:
    return tmp_path / ".longrun"


@pytest.fixture
def running_dev(dev_dir: Path) -> Iterator[IO[str]]:
    """What a running `longrun dev` holds: the lock on its folder."""
    handle = lock_home(dev_dir)
    try:
        yield handle
    finally:
        handle.close()


def _write(dev_dir: Path, **values: str) -> Path:
    dev_dir.mkdir(parents=True, exist_ok=True)
    return config.write_env_file(dev_dir, values)


async def test_commands_in_another_shell_use_the_file_of_a_running_longrun_dev(
    dev_dir: Path, running_dev: IO[str], settings: Settings
) -> None:
    # Given a running `longrun dev` whose Redis is at a port where nothing answers
    dead = f"redis://127.0.0.1:{free_port()}/0"
    path = _write(dev_dir, REDIS_URL=dead, DATABASE_URL=settings.database_url)
    assert path.stat().st_mode & 0o777 == 0o600  # it holds an API key

    # When a shell with no settings of its own asks for the status
    done = await longrun("status", env=cli_env(dev_dir))

    # Then it went to the file's Redis, and says so
    assert done.code == 2, done
    assert f"cannot reach Redis at {dead}" in done.err


async def test_a_shell_that_names_its_servers_is_not_redirected_by_the_file(
    dev_dir: Path, running_dev: IO[str], settings: Settings
) -> None:
    _write(dev_dir, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", LONGRUN_KEY_PREFIX="nope")

    done = await longrun("status", "--json", env=cli_env(dev_dir, settings))

    assert done.code == 0, done
    assert json.loads(done.out)["queue"] == f"{settings.key_prefix}:runs"


async def test_a_file_left_by_a_longrun_dev_that_was_killed_is_removed_not_followed(
    dev_dir: Path, settings: Settings
) -> None:
    # Given the file of a `longrun dev` that no longer runs (nobody holds its lock)
    path = _write(dev_dir, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    (dev_dir / config.LOCK_FILE).write_text("12345")

    # When a command runs in a shell that names only its key prefix
    env = cli_env(dev_dir, LONGRUN_KEY_PREFIX=settings.key_prefix)
    done = await longrun("status", "--json", env=env)

    # Then it used the default Redis, said why, and the stale file is gone
    assert done.code == 0, done
    assert done.err_lines == [
        f"longrun: removed {path}: the `longrun dev` that wrote it is no longer running"
    ]
    assert not path.exists()
