"""What `longrun dev` hands on once its stack is up: the API key it reuses from one start to the
next (`.longrun/dev-key`), the connection settings it writes to `.longrun/env` for the other
commands (`cli.config`), and the banner that prints both with copy-paste commands.

The banner's commands are the README's "Try it" commands, with the same names
(`$LONGRUN_URL`, `$LONGRUN_API_KEY`, `$RUN_ID`); a test holds the two together.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cli.config import KEY_FILE, redacted
from shared.config import Settings
from shared.store import Store

DEV_USER = "dev"
KEY_NAME = "longrun dev"

# ---- the dev key


def stored_key(home: Path) -> str | None:
    try:
        text = (home / KEY_FILE).read_text().strip()
    except OSError:
        return None
    return text or None


def store_key(home: Path, key: str) -> None:
    path = home / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")


async def dev_key(settings: Settings, home: Path) -> tuple[str, bool]:
    """(key, created): the key saved by an earlier start when the database still knows it as
    an unrevoked key of user `dev`; otherwise a new one, saved for the next start."""
    store = await Store.open(settings.with_(pg_pool_min=0, pg_pool_max=1), "longrun-dev")
    try:
        saved = stored_key(home)
        if saved is not None and await store.users.user_for_key(saved) == DEV_USER:
            return saved, False
        _, key = await store.users.create_key(DEV_USER, KEY_NAME)
    finally:
        await store.close()
    with contextlib.suppress(OSError):  # an unwritable folder costs a new key next time
        store_key(home, key)
    return key, True


# ---- the env file and the banner


def env_values(settings: Settings, url: str, key: str) -> dict[str, str]:
    """The `.longrun/env` of a running stack: everything another shell needs to reach it."""
    values = {
        "LONGRUN_URL": url,
        "LONGRUN_API_KEY": key,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "LONGRUN_KEY_PREFIX": settings.key_prefix,
    }
    if settings.queue != f"{settings.key_prefix}:runs":
        values["LONGRUN_QUEUE"] = settings.queue
    if settings.group != "workers":
        values["LONGRUN_GROUP"] = settings.group
    return values


def api_exports(url: str, key: str) -> str:
    """The banner's first settings line; the README's "Try it" starts with it."""
    return f"export LONGRUN_URL={url} LONGRUN_API_KEY={key}"


TICKER_PARAMS = '{"count": 5, "interval_ms": 200}'


# Copy-paste commands for a shell holding `api_exports`; each is a line of the README's "Try it".
TRY_IT = (
    f"RUN_ID=$(longrun submit \"count for me\" --agent ticker --params '{TICKER_PARAMS}')",
    'curl -sN "$LONGRUN_URL/runs/$RUN_ID/events" -H "Authorization: Bearer $LONGRUN_API_KEY"',
    "longrun runs get $RUN_ID",
    'longrun submit "hello" --follow',
)


def banner(
    *,
    url: str,
    key: str,
    key_created: bool,
    settings: Settings,
    redis_desc: str,
    postgres_desc: str,
    workers: int,
    env_file: Path,
    bin_dir: Path | None = None,
) -> str:
    """What `longrun dev` prints once the API answers. `bin_dir`: where `longrun` is, when it
    is not on the user's PATH (a line adds it)."""
    path = [f'  export PATH="{bin_dir}:$PATH"'] if bin_dir is not None else []
    servers = (
        f"export REDIS_URL={redacted(settings.redis_url)} "
        f"DATABASE_URL={redacted(settings.database_url)}"
    )
    where = "new" if key_created else "reused"
    return "\n".join(
        [
            "",
            f"longrun is up: API {url}, {workers} worker process(es)",
            f"  Redis:    {redis_desc}",
            f"  Postgres: {postgres_desc}",
            f"  API key:  user {DEV_USER}, {where} (kept in {env_file.parent / KEY_FILE})",
            "",
            f"Console: {url}/console  (sign in with this key: {key})",
            "",
            f"Settings (saved in {env_file}; longrun commands in another shell read it):",
            f"  {api_exports(url, key)}",
            f"  {servers}",
            *path,
            "",
            "Try it:",
            *(f"  {line}" for line in TRY_IT),
            "",
            "Ctrl-C stops everything.",
            "",
        ]
    )
