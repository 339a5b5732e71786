"""The thread history cache: a thread's recent messages (JSON bytes) under a short TTL, a cache
of Postgres that `shared.history` reads through and the worker drops when a run ends."""

from __future__ import annotations

from shared.redis.client import Redis
from shared.redis.keys import Keys


class ThreadCache:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys

    async def get(self, user_id: str, thread_id: str) -> bytes | None:
        value: bytes | None = await self.r.get(self.keys.thread_history(user_id, thread_id))
        return value

    async def put(self, user_id: str, thread_id: str, value: bytes, ttl_seconds: int) -> None:
        await self.r.set(self.keys.thread_history(user_id, thread_id), value, ex=ttl_seconds)

    async def drop(self, user_id: str, thread_id: str) -> None:
        await self.r.delete(self.keys.thread_history(user_id, thread_id))
