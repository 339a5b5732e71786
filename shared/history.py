"""A thread's conversation history: Postgres holds all of it; Redis caches the recent part.

Writes go to Postgres (in the transaction that ends the run) and then delete the cache key, so
the next read repopulates it. Runs of one thread never overlap and the next one is enqueued
only after that delete, so a run never starts on a stale cache; if the delete itself fails
(Redis down at that moment) the key's short TTL bounds how long anything stale can be read.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from shared.redis.cache import ThreadCache
from shared.redis.client import REDIS_DOWN
from shared.store import Store

RECENT = 200
CACHE_TTL_SECONDS = 300


async def load_history(
    store: Store, cache: ThreadCache, user_id: str, thread_id: str
) -> list[dict[str, Any]]:
    """The thread's recent messages, oldest first, as `{"role", "content"}`."""
    with contextlib.suppress(*REDIS_DOWN):
        cached = await cache.get(user_id, thread_id)
        if cached is not None:
            value: list[dict[str, Any]] = orjson.loads(cached)
            return value
    rows = await store.threads.recent_thread_messages(user_id, thread_id, RECENT)
    messages = [{"role": m["role"], "content": m["content"]} for m in rows]
    with contextlib.suppress(*REDIS_DOWN):
        await cache.put(user_id, thread_id, orjson.dumps(messages), CACHE_TTL_SECONDS)
    return messages


async def invalidate(cache: ThreadCache, user_id: str, thread_id: str) -> None:
    with contextlib.suppress(*REDIS_DOWN):
        await cache.drop(user_id, thread_id)
