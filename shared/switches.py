"""Operator switches kept in Redis, shared by every API process: the submit kill switch
(`longrun pause` / `longrun resume`) and the API-key epoch that `longrun keys revoke` bumps so
that API processes drop their cached key look-ups at once.

Key names come from `Keys.scoped`; this module only owns which parts they use.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.keys import Keys


def pause_key(keys: Keys) -> str:
    """Present while submits are paused; its value is the operator's reason."""
    return keys.scoped("admission", "paused")


def key_epoch_key(keys: Keys) -> str:
    """A counter: a cached API-key look-up is valid only under the epoch it was made in."""
    return keys.scoped("auth", "key_epoch")


async def set_paused(r: aioredis.Redis, keys: Keys, reason: str | None) -> None:
    """Pause submits with a reason, or resume them with None."""
    if reason is None:
        await r.delete(pause_key(keys))
    else:
        await r.set(pause_key(keys), reason or "paused")


async def paused_reason(r: aioredis.Redis, keys: Keys) -> str | None:
    raw: bytes | None = await r.get(pause_key(keys))
    return None if raw is None else raw.decode(errors="replace")


async def bump_key_epoch(r: aioredis.Redis, keys: Keys) -> int:
    return int(await r.incr(key_epoch_key(keys)))
