"""The workers' side of the queue: the consumer group (create, read, re-claim, dead-letter), the
live-workers registry (heartbeat, in-flight figure, leaving), the cancel channel, and the
reconciler's reads and housekeeping (its lock, the run ids queued, dead workers and consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from shared.redis import scripts
from shared.redis.client import REDIS_ERRORS, Redis, server_run_ids
from shared.redis.codec import QueueEntry, parse_queue_entry, text
from shared.redis.keys import DEAD_LETTER_MAXLEN, Keys


class CancelFeed:
    """The run ids published on the cancel channel, as they come (`async with`).

    On a Redis Cluster the channel is a shard channel (SSUBSCRIBE/SPUBLISH, Redis 7): it lives
    on the node owning its slot, so a cancel is not broadcast over the whole cluster bus, and
    redis-py follows the channel to its new node after a failover or a slot move. On one
    server, plain SUBSCRIBE/PUBLISH (Redis 6.2 has no shard channels). Either way the channel
    is a fast path only: the cancel flag in the run's meta hash (cancel.lua), which every
    append reports, and Postgres (the worker's touch) are what a cancel cannot be lost from.
    """

    def __init__(self, r: Redis, channel: str) -> None:
        self._sharded = isinstance(r, RedisCluster)
        self._pubsub: Any = r.pubsub()
        self._channel = channel

    async def __aenter__(self) -> CancelFeed:
        try:
            if self._sharded:
                await self._pubsub.ssubscribe(self._channel)
            else:
                await self._pubsub.subscribe(self._channel)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._pubsub.aclose()

    async def next(self, wait_seconds: float) -> str | None:
        """The next run id, or None when none came within `wait_seconds`."""
        if self._sharded:
            began = time.monotonic()
            msg = await self._pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=wait_seconds
            )
            if msg is None and time.monotonic() - began < wait_seconds / 2:
                # It returns at once for a subscribe confirmation, or while it has no node to
                # poll (between a failover and its re-subscription): wait, do not spin.
                await asyncio.sleep(min(wait_seconds, 0.1))
        else:
            msg = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=wait_seconds
            )
        if msg is None:
            return None
        data = msg["data"]
        return data.decode() if isinstance(data, bytes) else str(data)


async def publish_cancel(r: Redis, channel: str, run_id: str) -> None:
    """Tell the workers' `CancelFeed`s (a shard channel on a cluster, see there)."""
    if isinstance(r, RedisCluster):
        await r.spublish(channel, run_id)
    else:
        await r.publish(channel, run_id)


class GroupIO:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._drop_idle = r.register_script(scripts.DROP_IDLE_CONSUMERS)
        self._release = r.register_script(scripts.RELEASE)

    # -- the consumer group ------------------------------------------------------------------
    async def ensure(self) -> None:
        """Create the group (and the queue stream) unless it exists."""
        try:
            await self.r.xgroup_create(self.keys.queue, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """Up to `count` entries never delivered before (`XREADGROUP >`), waiting up to
        `block_ms` for one."""
        reply = await self.r.xreadgroup(
            self.keys.group, consumer, {self.keys.queue: ">"}, count=count, block=block_ms
        )
        return [
            parse_queue_entry(entry_id, fields)
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    async def reclaim(
        self, consumer: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[QueueEntry]]:
        """One `XAUTOCLAIM` page of entries idle past `min_idle_ms`: the cursor of the next page
        ('0-0' after the last) and the entries now this consumer's. Entries deleted meanwhile
        are acked away, not returned."""
        reply = await self.r.xautoclaim(
            self.keys.queue, self.keys.group, consumer, min_idle_ms, start, count=count
        )
        claimed = reply[1]
        deleted = reply[2] if len(reply) > 2 else []  # Redis 7: ids that no longer exist
        for entry_id in deleted:
            await self.r.xack(self.keys.queue, self.keys.group, entry_id)
        entries = []
        for entry_id, fields in claimed:
            if fields is None:  # Redis 6.2 reports deleted entries as nil fields
                await self.r.xack(self.keys.queue, self.keys.group, entry_id)
                continue
            entries.append(parse_queue_entry(entry_id, fields))
        return text(reply[0]), entries

    async def deliveries(self, entry_id: str) -> int:
        """How many times the entry has been delivered (1 when it is not pending)."""
        info = await self.r.xpending_range(
            self.keys.queue, self.keys.group, min=entry_id, max=entry_id, count=1
        )
        return int(info[0]["times_delivered"]) if info else 1

    async def dead_letter(self, entry: QueueEntry, deliveries: int, reason: str) -> None:
        await self.r.xadd(
            self.keys.dead_letters,
            {
                "run": entry.run_id,
                "entry": entry.entry_id,
                "deliveries": deliveries,
                "reason": reason,
                "at": f"{time.time():.3f}",
            },
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )

    def cancels(self) -> CancelFeed:
        return CancelFeed(self.r, self.keys.cancel_channel)

    # -- the live-workers registry -----------------------------------------------------------
    async def beat(self, name: str, figures: dict[str, Any], ttl_seconds: int) -> None:
        """The worker's heartbeat: its time in the live-workers set and its figures (a hash
        that expires after `ttl_seconds` without a beat)."""
        wall = time.time()
        async with self.r.pipeline(transaction=False) as p:
            p.zadd(self.keys.workers, {name: wall})
            p.hset(self.keys.worker_info(name), mapping={**figures, "heartbeat": f"{wall:.3f}"})
            p.expire(self.keys.worker_info(name), ttl_seconds)
            await p.execute()

    async def publish_in_flight(self, name: str, in_flight: int, ttl_seconds: int) -> None:
        """The worker's in-flight figure between heartbeats (a slot filled or freed)."""
        async with self.r.pipeline(transaction=False) as p:
            p.hset(self.keys.worker_info(name), "in_flight", in_flight)
            p.expire(self.keys.worker_info(name), ttl_seconds)
            await p.execute()

    async def leave(self, name: str) -> None:
        await self.r.zrem(self.keys.workers, name)
        await self.r.delete(self.keys.worker_info(name))

    async def forget_dead_workers(self, older_than_seconds: float) -> int:
        """Drop workers whose last heartbeat is older than this from the live-workers set."""
        cutoff = time.time() - older_than_seconds
        dead = await self.r.zrangebyscore(self.keys.workers, "-inf", cutoff)
        for name in dead:
            await self.leave(text(name))
        return len(dead)

    # -- the reconciler ----------------------------------------------------------------------
    async def take_reconcile_lock(self, owner: str, ttl_ms: int) -> bool:
        return bool(await self.r.set(self.keys.reconcile_lock, owner, nx=True, px=ttl_ms))

    async def release_reconcile_lock(self, owner: str) -> None:
        """Let the next pass (any worker's) run at once, if this owner still holds it."""
        await self._release(keys=[self.keys.reconcile_lock], args=[owner])

    @property
    def spans_nodes(self) -> bool:
        """The data lives on several primaries (a cluster): one may restart or fail over while
        the queue's node (every heartbeat's renew) answers, so `server_run_id` must be watched
        on every heartbeat, not only after a failed one."""
        return isinstance(self.r, RedisCluster)

    async def server_run_id(self) -> str:
        """Redis' own run id (`INFO server`): a new one means a restarted (or failed-over)
        server, which may have lost what it had not persisted. On a cluster, every primary's
        (node and run id): any primary restarting or failing over changes it."""
        return await server_run_ids(self.r)

    async def paused(self) -> bool:
        """Whether the kill switch is on (`longrun pause`): workers' schedules hold while it is."""
        return bool(await self.r.exists(self.keys.paused))

    async def queued_run_ids(self, batch: int = 1000) -> set[str]:
        """Run ids of every entry in the queue stream (pending ones included)."""
        found: set[str] = set()
        start = "-"
        while True:
            entries = await self.r.xrange(self.keys.queue, min=start, max="+", count=batch)
            for _entry_id, fields in entries:
                run = fields.get(b"run")
                if run:
                    found.add(run.decode())
            if len(entries) < batch:
                return found
            start = "(" + text(entries[-1][0])

    async def drop_idle_consumers(self, idle_ms: int) -> int:
        """Remove consumers idle over `idle_ms` that hold nothing pending (atomically)."""
        removed = await self._drop_idle(keys=[self.keys.queue], args=[self.keys.group, idle_ms])
        return int(removed)
