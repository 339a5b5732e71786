"""The workers' side of the queue: the shards' consumer groups (create, read with promotion
from the held lines, re-claim, dead-letter), the live-workers registry (heartbeat, in-flight
figure, leaving), the cancel channel, and the reconciler's reads and housekeeping (its lock,
the run ids queued, the tenant lines' check, dead workers and consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from shared.redis import scripts
from shared.redis.client import REDIS_ERRORS, Redis, server_run_ids
from shared.redis.codec import (
    QueueEntry,
    pairs_to_map,
    parse_queue_entry,
    split_entry_id,
    text,
)
from shared.redis.keys import DEAD_LETTER_MAXLEN, PRIORITY_LEVELS, Keys


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
    """The queue's shards as the workers see them: every shard's ready stream has its own
    consumer group; a worker takes entries from each in turn (`read`), re-claims per shard,
    and the reconciler lists and checks every shard. The shards covered are those up to the
    largest shard count any process ran with (`Keys.shards_seen`), so a queue whose shard
    count shrank is still drained."""

    def __init__(self, r: Redis, keys: Keys, *, starvation: int = 10, fair: bool = True) -> None:
        self.r = r
        self.keys = keys
        self.starvation = starvation
        self.fair = fair
        self.covered = keys.shards  # shards read and reconciled (see `refresh_shards`)
        self._next_shard = 0  # the shard the next read starts with (rotated)
        # The wait watches one shard at a time: on a Redis Cluster (a multi-stream XREAD spans
        # slots), or once a server refused one (CROSSSLOT).
        self._one_slot_reads = isinstance(r, RedisCluster)
        self._drop_idle = r.register_script(scripts.DROP_IDLE_CONSUMERS)
        self._release = r.register_script(scripts.RELEASE)
        self._pull = r.register_script(scripts.PULL)
        self._rebuild = r.register_script(scripts.REBUILD)

    # -- the consumer groups -----------------------------------------------------------------
    async def refresh_shards(self) -> int:
        """Record this process's shard count and cover every shard any process ran with."""
        n = self.keys.shards
        try:
            await self.r.zadd(self.keys.shards_seen, {str(n): n})
            top = await self.r.zrevrange(self.keys.shards_seen, 0, 0, withscores=True)
        except ResponseError:
            # An error reply (MOVED on a node without that slot, WRONGTYPE ...): the shards of
            # this process's count are still read; the record is tried again next period.
            self.covered = max(self.covered, n)
            return self.covered
        self.covered = max(n, int(top[0][1])) if top else n
        return self.covered

    async def ensure(self) -> None:
        """Create each shard's group (and ready stream) unless it exists."""
        await self.refresh_shards()
        for shard in range(self.covered):
            try:
                await self.r.xgroup_create(
                    self.keys.shard_queue(shard), self.keys.group, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _pull_keys(self, shard: int) -> list[str]:
        k = self.keys
        return [
            k.shard_queue(shard),
            k.held(shard),
            k.skips(shard),
            *(k.ring(shard, level) for level in PRIORITY_LEVELS),
        ]

    def _pull_args(self, shard: int, consumer: str, count: int) -> list[Any]:
        k = self.keys
        return [k.group, consumer, count, self.starvation, k.tenant_list_prefix(shard)]

    def _entries(self, reply: Any, shard: int) -> tuple[list[QueueEntry], int]:
        entries = [
            parse_queue_entry(entry_id, pairs_to_map(fields), shard)
            for entry_id, fields in reply[0]
        ]
        return entries, int(reply[1])

    async def pull(self, shard: int, consumer: str, count: int) -> tuple[list[QueueEntry], int]:
        """Up to `count` entries of one shard (`pull.lua`: undelivered ready entries first,
        then promotions from held by priority and round-robin across tenants), and the
        server's time in ms when it ran."""
        reply = await self._pull(
            keys=self._pull_keys(shard), args=self._pull_args(shard, consumer, count)
        )
        return self._entries(reply, shard)

    async def read(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """Up to `count` entries, from every shard in turn (each read starts one shard
        further), waiting up to `block_ms` for one when every shard is empty. One script call
        per shard (a shard is one slot); the wait watches every held stream at once (one
        rotating shard at a time on Redis Cluster) and takes nothing itself: the pulls after
        it do, the first in the wait's own round trip (`_wait_then_pull`)."""
        entries, since = await self._sweep(consumer, count)
        if entries or block_ms <= 0:
            return entries
        return await self._wait_then_pull(consumer, count, since, block_ms)

    async def _sweep(
        self, consumer: str, count: int, done: int | None = None
    ) -> tuple[list[QueueEntry], dict[int, int]]:
        """Each shard pulled in turn (but `done`, pulled already) until `count` entries."""
        n = self.covered
        first = self._next_shard % n
        self._next_shard = (first + 1) % n
        out: list[QueueEntry] = []
        since: dict[int, int] = {}
        for i in range(n):
            shard = (first + i) % n
            if len(out) >= count:
                break
            if shard == done:
                continue
            got, now_ms = await self.pull(shard, consumer, count - len(out))
            out += got
            since[shard] = now_ms
        return out, since

    async def _wait_then_pull(
        self, consumer: str, count: int, since: dict[int, int], block_ms: int
    ) -> list[QueueEntry]:
        """Until an entry is added to a held stream after the sweep saw it empty (ids from the
        server's time then: an add during the sweep wakes it too), or `block_ms` passes; then
        the pull of the shard the next sweep starts with, pipelined behind the wait: Redis runs
        it as soon as the wait returns, so a run submitted to an idle worker costs no second
        round trip (bench.stream_ttft). `count` cannot have shrunk meanwhile: the worker waits
        here, its free slots only grow. The other shards, if any, are pulled after."""
        shard = self._next_shard % self.covered
        streams = {self.keys.held(s): f"{ms - 1}-0" for s, ms in since.items()}
        block = block_ms
        if self._one_slot_reads and len(streams) > 1:
            held = self.keys.held(shard)
            streams = {held: streams.get(held, "$")}
            block = max(50, block_ms // self.covered)
        keys = self._pull_keys(shard)
        async with self.r.pipeline(transaction=False) as p:
            p.xread(streams, count=1, block=block)
            p.evalsha(self._pull.sha, len(keys), *keys, *self._pull_args(shard, consumer, count))
            waited, pulled = await p.execute(raise_on_error=False)
        if isinstance(waited, ResponseError):
            if "CROSSSLOT" not in str(waited):
                raise waited
            self._one_slot_reads = True  # (a server refused the multi-stream wait)
        if isinstance(pulled, NoScriptError):  # Redis restarted or flushed: load it again
            self._pull.sha = text(await self.r.script_load(scripts.PULL))
            pulled = None
        elif isinstance(pulled, BaseException):
            raise pulled
        got = [] if pulled is None else self._entries(pulled, shard)[0]
        if pulled is not None:
            self._next_shard = (shard + 1) % self.covered
            if self.covered == 1 or len(got) >= count:
                return got
        rest, _ = await self._sweep(consumer, count - len(got), done=shard if pulled else None)
        return got + rest

    async def reclaim(
        self, consumer: str, min_idle_ms: int, start: str, count: int, shard: int = 0
    ) -> tuple[str, list[QueueEntry]]:
        """One `XAUTOCLAIM` page of one shard's entries idle past `min_idle_ms`: the cursor of
        the next page ('0-0' after the last) and the entries now this consumer's. Entries
        deleted meanwhile are acked away, not returned."""
        queue = self.keys.shard_queue(shard)
        reply = await self.r.xautoclaim(
            queue, self.keys.group, consumer, min_idle_ms, start, count=count
        )
        claimed = reply[1]
        deleted = reply[2] if len(reply) > 2 else []  # Redis 7: ids that no longer exist
        for entry_id in deleted:
            await self.r.xack(queue, self.keys.group, entry_id)
        entries = []
        for entry_id, fields in claimed:
            if fields is None:  # Redis 6.2 reports deleted entries as nil fields
                await self.r.xack(queue, self.keys.group, entry_id)
                continue
            entries.append(parse_queue_entry(entry_id, fields, shard))
        return text(reply[0]), entries

    async def deliveries(self, entry_id: str) -> int:
        """How many times the entry has been delivered (1 when it is not pending)."""
        shard, raw = split_entry_id(entry_id)
        info = await self.r.xpending_range(
            self.keys.shard_queue(shard), self.keys.group, min=raw, max=raw, count=1
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
        """A failover may happen without any heartbeat failing, so `server_run_id` must be
        watched on every heartbeat, not only after a failed one. On a cluster the data lives on
        several primaries: one may restart or fail over while the queue's node (every
        heartbeat's renew) answers. Under Sentinel, a primary frozen past the failover wakes
        still a primary: pooled connections go on writing to it until the sentinels turn it into
        a replica, which drops those writes, and redis-py reconnects to the new primary without
        an error reaching us (tests/chaos/test_truth_sentinel.py)."""
        return isinstance(self.r, RedisCluster) or isinstance(
            self.r.connection_pool, SentinelConnectionPool
        )

    async def server_run_id(self) -> str:
        """Redis' own run id (`INFO server`): a new one means a restarted (or failed-over)
        server, which may have lost what it had not persisted. On a cluster, every primary's
        (node and run id): any primary restarting or failing over changes it."""
        return await server_run_ids(self.r)

    async def paused(self) -> bool:
        """Whether the kill switch is on (`longrun pause`): workers' schedules hold while it is."""
        return bool(await self.r.exists(self.keys.paused))

    async def queued_run_ids(self, batch: int = 1000) -> set[str]:
        """Run ids of every entry of every shard, ready (pending ones included) or held."""
        found: set[str] = set()
        for shard in range(self.covered):
            for stream in (self.keys.shard_queue(shard), self.keys.held(shard)):
                found |= await self._stream_run_ids(stream, batch)
        return found

    async def _stream_run_ids(self, stream: str, batch: int) -> set[str]:
        found: set[str] = set()
        start = "-"
        while True:
            entries = await self.r.xrange(stream, min=start, max="+", count=batch)
            for _entry_id, fields in entries:
                run = fields.get(b"run")
                if run:
                    found.add(run.decode())
            if len(entries) < batch:
                return found
            start = "(" + text(entries[-1][0])

    async def rebuild_lines(self, shared_tenant: str) -> int:
        """Check every shard's tenant lists against its held stream, rebuilding them from
        the stream where they disagree (`rebuild.lua`). Returns the ids re-listed."""
        fixed = 0
        for shard in range(self.covered):
            k = self.keys
            n = await self._rebuild(
                keys=[k.held(shard), *(k.ring(shard, level) for level in PRIORITY_LEVELS)],
                args=[k.tenant_list_prefix(shard), 1 if self.fair else 0, shared_tenant],
            )
            fixed += max(0, int(n))
        return fixed

    async def drop_idle_consumers(self, idle_ms: int) -> int:
        """Remove consumers idle over `idle_ms` that hold nothing pending (atomically), from
        every shard's group."""
        removed = 0
        for shard in range(self.covered):
            removed += int(
                await self._drop_idle(
                    keys=[self.keys.shard_queue(shard)], args=[self.keys.group, idle_ms]
                )
            )
        return removed
