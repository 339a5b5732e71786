"""Operator commands: `longrun pause [--reason R]`, `longrun resume`, and `longrun keys revoke`
with immediate effect (the revoking commit, then the key epoch every API process checks: the
key's next request is a 401, its open event streams and the stream tokens it minted end within
2 seconds, see `api.revocation`).

Each function takes the settings and returns the process exit code.
"""

from __future__ import annotations

import asyncio
import sys

from shared.config import Settings
from shared.redis.admission import AdmissionIO
from shared.redis.client import REDIS_DOWN, create_redis
from shared.redis.keys import Keys
from shared.store import Store


def _switches(settings: Settings) -> AdmissionIO:
    return AdmissionIO(create_redis(settings, "longrun-cli"), Keys.from_settings(settings))


async def _set_paused(settings: Settings, reason: str | None) -> None:
    switches = _switches(settings)
    try:
        await switches.set_paused(reason)
    finally:
        await switches.aclose()


def pause(settings: Settings, reason: str = "paused by an operator") -> int:
    """Every API process answers POST /runs with 503 `paused` until `resume`. Runs already
    accepted go on; GET, events and cancel keep working."""
    asyncio.run(_set_paused(settings, reason))
    print(f"submits paused ({reason}); `longrun resume` accepts runs again")
    return 0


def resume(settings: Settings) -> int:
    asyncio.run(_set_paused(settings, None))
    note = "" if settings.accept_runs else " (but LONGRUN_ACCEPT_RUNS=false still refuses them)"
    print(f"submits resumed{note}")
    return 0


async def revoke_key(settings: Settings, key_id: str) -> bool:
    """Revoke in Postgres, then bump the key epoch so API caches drop the key at once and its
    open streams end within 2 seconds. If Redis is unreachable the revocation still holds:
    requests within the API's 5-second key cache, open streams within 12 seconds."""
    store = await Store.open(settings.with_(pg_pool_min=0, pg_pool_max=2), "longrun-cli")
    try:
        revoked = await store.users.revoke_key(key_id)
    finally:
        await store.close()
    switches = _switches(settings)
    try:
        await switches.bump_key_epoch()
    except REDIS_DOWN:
        print(
            "longrun: warning: Redis unreachable: API processes may accept the key for 5 more "
            "seconds, and keep its open event streams for 12",
            file=sys.stderr,
        )
    finally:
        await switches.aclose()
    return revoked


def revoke(settings: Settings, key_id: str) -> int:
    ok = asyncio.run(revoke_key(settings, key_id))
    print("revoked" if ok else "no such active key")
    return 0 if ok else 1
