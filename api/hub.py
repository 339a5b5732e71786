"""The event hub: one blocking `XREAD` per API process fans run events out to every local SSE
subscriber, instead of one blocked Redis connection per client.

    subscriber A ─┐                      ┌─ XREAD BLOCK STREAMS ev:{r1} ev:{r2} hub:wake ...
    subscriber B ─┼─ queue (bounded) <───┤   (one connection, all watched runs)
    subscriber C ─┘                      └─ a new watch XADDs hub:wake to break the block

A subscriber's queue is bounded: when it is full the hub stops pushing to it and marks it
`behind`; the subscriber then catches up with `XRANGE` on its own, so a slow client costs at
most one queue of memory and never delays the others. Subscribers also heal any gap they see
(an event whose seq is not cursor + 1) with `XRANGE`, so the hub only has to be fast, not
perfect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog

from shared.keys import Keys
from shared.models import Event
from shared.redisio import REDIS_DOWN, parse_stream_events

log = structlog.get_logger("longrun.api.hub")

QUEUE_SIZE = 512
BLOCK_MS = 5000
READ_COUNT = 1000


@dataclass(eq=False)
class Subscription:
    run_id: str
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    behind: bool = False
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    read_at: float = 0.0  # monotonic time of the hub read that pushed the queued events


@dataclass
class Watch:
    key: str
    last_seq: int
    subs: set[Subscription] = field(default_factory=set)


class Hub:
    def __init__(self, r: aioredis.Redis, keys: Keys, waker: aioredis.Redis | None = None) -> None:
        # A dedicated client: its one connection sits in XREAD BLOCK. Wake-ups go through
        # `waker` (the process's shared client): sent on the hub's own small pool, a burst of
        # new subscribers ran it out of connections and failed the blocking read itself.
        self.r = r
        self.waker = waker or r
        self.keys = keys
        self.watches: dict[str, Watch] = {}
        self.wake_key = keys.scoped("hub", uuid.uuid4().hex)
        self._wake_id = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        # Called with the seconds from the hub's read to a subscriber taking the events.
        self.on_delivery: Callable[[float], None] | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(w.subs) for w in self.watches.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(*REDIS_DOWN):
            await self.r.delete(self.wake_key)
        await self.r.aclose()

    async def subscribe(self, run_id: str, cursor: int) -> Subscription:
        sub = Subscription(run_id)
        key = self.keys.events(run_id)
        watch = self.watches.get(key)
        if watch is None:
            self.watches[key] = Watch(key, cursor, {sub})
            await self._wake()
        else:
            watch.subs.add(sub)
        return sub

    def delivered(self, sub: Subscription) -> None:
        """A subscriber took its pushed events: report the delivery lag."""
        if self.on_delivery is not None and sub.read_at:
            self.on_delivery(time.monotonic() - sub.read_at)

    def unsubscribe(self, sub: Subscription) -> None:
        key = self.keys.events(sub.run_id)
        watch = self.watches.get(key)
        if watch is None:
            return
        watch.subs.discard(sub)
        if not watch.subs:
            del self.watches[key]

    async def _wake(self) -> None:
        self._changed.set()
        with contextlib.suppress(*REDIS_DOWN):
            await self.waker.xadd(self.wake_key, {"w": 1}, maxlen=1, approximate=False)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            if not self.watches:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._read_once()
                delay = 0.05
            except REDIS_DOWN as exc:
                log.warning("hub_read_failed", error=type(exc).__name__)
                self._wake_all()  # subscribers fall back to their own reads
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _read_once(self) -> None:
        streams = {w.key: f"0-{w.last_seq}" for w in self.watches.values()}
        streams[self.wake_key] = self._wake_id
        self._changed.clear()
        reply = await self.r.xread(streams, count=READ_COUNT, block=BLOCK_MS)
        read_at = time.monotonic()
        for raw_key, entries in reply or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if key == self.wake_key:
                last = entries[-1][0]
                self._wake_id = last.decode() if isinstance(last, bytes) else last
                continue
            watch = self.watches.get(key)
            if watch is None or not entries:
                continue
            events = parse_stream_events(entries)
            watch.last_seq = max(watch.last_seq, events[-1].seq)
            for sub in watch.subs:
                self._push(sub, events, read_at)

    @staticmethod
    def _push(sub: Subscription, events: list[Event], read_at: float = 0.0) -> None:
        if not sub.behind:
            sub.read_at = read_at
            for e in events:
                try:
                    sub.queue.put_nowait(e)
                except asyncio.QueueFull:
                    sub.behind = True
                    break
        sub.woken.set()

    def _wake_all(self) -> None:
        for w in self.watches.values():
            for sub in w.subs:
                sub.behind = True
                sub.woken.set()
