"""What operators read and do in Redis: the bounded reads behind the cluster snapshot
(`shared.metrics.cluster_redis`: queue, group, workers, dead letters, counters, breakers) and
the dead-letter commands (`longrun dlq`). Replies are returned as text; judging them is
`shared.metrics`'."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from shared.redis.breakers import BreakerIO
from shared.redis.client import Redis
from shared.redis.codec import text, text_map
from shared.redis.keys import Keys

DeadLetterEntry = tuple[str, dict[str, str]]  # entry id, fields


class OpsIO:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self.breakers = BreakerIO(r, keys)

    async def aclose(self) -> None:
        await self.r.aclose()

    # -- the queue's shards and their groups ---------------------------------------------------
    async def shard_count(self) -> int:
        """Shards to look at: this process's count, or the largest any process ran with."""
        top = await self.r.zrevrange(self.keys.shards_seen, 0, 0, withscores=True)
        return max(self.keys.shards, int(top[0][1]) if top else 0)

    async def scheduled(self) -> int:
        """Delayed runs waiting for their start (not in the queue stream)."""
        return int(await self.r.zcard(self.keys.delayed))

    async def shard_lengths(self) -> list[tuple[int, int]]:
        """(XLEN ready, XLEN held) of every shard, in one round trip."""
        n = await self.shard_count()
        async with self.r.pipeline(transaction=False) as p:
            for shard in range(n):
                p.xlen(self.keys.shard_queue(shard))
                p.xlen(self.keys.held(shard))
            lens = await p.execute()
        return [(int(lens[2 * i]), int(lens[2 * i + 1])) for i in range(n)]

    async def backlog(self) -> int:
        """XLEN of every shard's ready and held streams: queued plus in flight."""
        return sum(ready + held for ready, held in await self.shard_lengths())

    async def groups(self, shard: int = 0) -> list[dict[str, Any]]:
        """`XINFO GROUPS` of a shard's ready stream, values as text where they are bytes ([]
        without the stream)."""
        try:
            rows = await self.r.xinfo_groups(self.keys.shard_queue(shard))
        except ResponseError:  # no queue stream yet
            return []
        return [{k: text(v) if isinstance(v, bytes) else v for k, v in g.items()} for g in rows]

    async def first_entry_after(self, entry_id: str | None, shard: int = 0) -> str | None:
        """The id of the first entry of a shard's ready stream after `entry_id` (from the start
        for None)."""
        low = "-" if entry_id is None else f"({entry_id}"
        rows = await self.r.xrange(self.keys.shard_queue(shard), min=low, max="+", count=1)
        return text(rows[0][0]) if rows else None

    async def oldest_held(self, shard: int) -> str | None:
        """The id of a shard's oldest held entry (its submit time), or None."""
        rows = await self.r.xrange(self.keys.held(shard), count=1)
        return text(rows[0][0]) if rows else None

    # -- workers -----------------------------------------------------------------------------
    async def workers(self) -> tuple[list[tuple[str, float]], list[dict[str, str]]]:
        """The live-workers set (name, last heartbeat) and each worker's figures, in order."""
        rows = await self.r.zrange(self.keys.workers, 0, -1, withscores=True)
        beats = [(text(n), float(s)) for n, s in rows]
        if not beats:
            return [], []
        async with self.r.pipeline(transaction=False) as p:
            for name, _ in beats:
                p.hgetall(self.keys.worker_info(name))
            infos = await p.execute()
        return beats, [text_map(i) for i in infos]

    async def counters(self) -> dict[str, str]:
        return text_map(await self.r.hgetall(self.keys.counters))

    async def breaker_states(self, cap: int) -> dict[str, str]:
        return await self.breakers.states(cap)

    # -- dead letters ------------------------------------------------------------------------
    async def dead_letter_count(self) -> int:
        return int(await self.r.xlen(self.keys.dead_letters))

    async def dead_letters(self, after: str = "-", limit: int = 10_000) -> list[DeadLetterEntry]:
        """Dead letters after the entry id `after` (all for '-'), oldest first."""
        low = "-" if after == "-" else f"({after}"
        rows = await self.r.xrange(self.keys.dead_letters, min=low, max="+", count=limit)
        return [(text(eid), text_map(fields)) for eid, fields in rows]

    async def newest_dead_letter(self) -> DeadLetterEntry | None:
        rows = await self.r.xrevrange(self.keys.dead_letters, count=1)
        return (text(rows[0][0]), text_map(rows[0][1])) if rows else None

    async def drop_dead_letters(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self.r.xdel(self.keys.dead_letters, *entry_ids)

    async def dlq_watermark(self) -> str:
        """The newest dead-letter id an operator acknowledged ('0-0' when none was)."""
        return text(await self.r.get(self.keys.dlq_watermark)) or "0-0"

    async def set_dlq_watermark(self, entry_id: str) -> None:
        await self.r.set(self.keys.dlq_watermark, entry_id)
