"""The configuration a `longrun` command starts from: the environment, completed by the
`.longrun/env` file a running `longrun dev` wrote. `cli.main` calls `environment()` once; every
command gets the result (Settings for the servers, `api_target()` for the HTTP API).

`.longrun/` (`dev_home`) is where `longrun dev` keeps its embedded servers' data, its lock
(`dev.lock`, held while it runs), the API key it reuses (`dev-key`), and `env`: the connection
settings of the stack it runs, written once its servers are up and removed when it stops.

The rules for `env` (also in the README):
- it is used only while the `longrun dev` that wrote it still holds `dev.lock`; a file left by a
  `longrun dev` that was killed outright is stale: it is removed, with a note on stderr;
- its server settings (`REDIS_URL`, `DATABASE_URL`, the key prefix) are used only when the
  environment sets neither `REDIS_URL` nor `DATABASE_URL`, so a command never mixes one server
  from the file with another from the shell; its API settings (`LONGRUN_URL`, `LONGRUN_API_KEY`)
  only when the environment sets neither of those;
- a variable set in the environment always wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SOURCE_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = "env"
LOCK_FILE = "dev.lock"
KEY_FILE = "dev-key"
DEFAULT_API_URL = "http://127.0.0.1:8000"

# Variables `env` may hold, in the two groups that are taken or left as a whole.
SERVER_VARS = ("REDIS_URL", "DATABASE_URL", "LONGRUN_KEY_PREFIX", "LONGRUN_QUEUE", "LONGRUN_GROUP")
SERVER_SWITCHES = ("REDIS_URL", "DATABASE_URL")
API_VARS = ("LONGRUN_URL", "LONGRUN_API_KEY")


def dev_home(
    env: Mapping[str, str], source_root: Path = SOURCE_ROOT, cwd: Path | None = None
) -> Path:
    """`.longrun/`: `LONGRUN_DEV_DIR`, else `.longrun/` in the source checkout (gitignored),
    else `.longrun/` in the working directory."""
    if env.get("LONGRUN_DEV_DIR"):
        return Path(env["LONGRUN_DEV_DIR"]).resolve()
    if (source_root / "pyproject.toml").exists():
        return source_root / ".longrun"
    return (cwd or Path.cwd()) / ".longrun"


def redacted(url: str) -> str:
    """The URL without its passwords (a Sentinel URL's `sentinel_password` too), fit to print."""
    parts = urlsplit(url)
    query = re.sub(r"(^|&)(sentinel_password)=[^&]*", r"\1\2=***", parts.query)
    if parts.password is None and query == parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# ---- the env file: pure parts


def render_env_file(values: Mapping[str, str]) -> str:
    """Shell syntax (`export NAME=value` lines), so `. .longrun/env` works in a shell too."""
    head = "# written by `longrun dev` while it runs; other longrun commands read it\n"
    return head + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def parse_env_file(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.isidentifier():
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[name] = words[0] if words else ""
    return out


def merged(env: Mapping[str, str], from_file: Mapping[str, str]) -> dict[str, str]:
    """The environment completed by the file, by the rules in the module docstring."""
    out = dict(env)
    groups = ((SERVER_VARS, SERVER_SWITCHES), (API_VARS, API_VARS))
    for names, switches in groups:
        if any(env.get(s) for s in switches):
            continue
        for name in names:
            if name in from_file and not env.get(name):
                out[name] = from_file[name]
    return out


# ---- the env file: reading and writing


def dev_running(home: Path) -> bool:
    """True while a `longrun dev` holds `home/dev.lock` (the kernel drops the lock when that
    process ends, however it ends)."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock we took
    return False


def write_env_file(home: Path, values: Mapping[str, str]) -> Path:
    """Written by the lock holder only; readable by its owner only (it holds an API key)."""
    path = home / ENV_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_env_file(values))
    tmp.replace(path)
    return path


def remove_env_file(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / ENV_FILE).unlink()


def read_env_file(home: Path) -> dict[str, str]:
    """The live file's values; {} when there is none, and a stale one is removed."""
    path = home / ENV_FILE
    try:
        text = path.read_text()
    except OSError:
        return {}
    if dev_running(home):
        return parse_env_file(text)
    with contextlib.suppress(OSError):
        path.unlink()
    print(
        f"longrun: removed {path}: the `longrun dev` that wrote it is no longer running",
        file=sys.stderr,
    )
    return {}


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """What every command except `longrun dev` reads its configuration from."""
    return merged(env, read_env_file(dev_home(env)))


# ---- the HTTP API


@dataclass(frozen=True)
class ApiTarget:
    url: str
    key: str | None


def api_target(env: Mapping[str, str], url: str | None = None, key: str | None = None) -> ApiTarget:
    """Options first, then `LONGRUN_URL` / `LONGRUN_API_KEY` (from the environment or the
    env file), then the default URL."""
    chosen = url or env.get("LONGRUN_URL") or DEFAULT_API_URL
    return ApiTarget(chosen.rstrip("/"), key or env.get("LONGRUN_API_KEY") or None)
