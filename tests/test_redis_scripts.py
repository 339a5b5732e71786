"""The Lua scripts: one `.lua` file each in `shared/redis/scripts/`, every file read by the
loader and used by an io module, and every one compiles on the real Redis."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import redis.asyncio as aioredis

from shared.redis import scripts

SCRIPTS_DIR = Path(scripts.__file__).parent
REDIS_PACKAGE = SCRIPTS_DIR.parent


def test_every_lua_file_is_loaded_and_used_by_an_io_module() -> None:
    files = {p.stem for p in SCRIPTS_DIR.glob("*.lua")}
    assert files == set(scripts.ALL)
    io_source = "\n".join(p.read_text() for p in REDIS_PACKAGE.glob("*.py"))
    used = set(re.findall(r"scripts\.([A-Z_]+)\b", io_source))
    assert {name.upper() for name in files} <= used
    for name, source in scripts.ALL.items():
        assert source == (SCRIPTS_DIR / f"{name}.lua").read_text()
        assert getattr(scripts, name.upper()) == source, name


async def test_every_script_loads_on_redis(redis_client: aioredis.Redis) -> None:
    for name, source in scripts.ALL.items():
        sha = await redis_client.script_load(source)
        assert sha == hashlib.sha1(source.encode()).hexdigest(), name


def test_the_scripts_ship_in_the_package_data() -> None:
    pyproject = (REDIS_PACKAGE.parent.parent / "pyproject.toml").read_text()
    assert '"redis/scripts/*.lua"' in pyproject
