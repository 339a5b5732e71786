"""The event hub: one blocking `XREAD` per API process fans run events out to every local SSE
subscriber, instead of one blocked Redis connection per client.

    subscriber A ─┐                      ┌─ XREAD BLOCK STREAMS ev:{r1} ev:{r2} hub:wake ...
    subscriber B ─┼─ pending (bounded) <─┤   (one connection, all watched runs)
    subscriber C ─┘                      └─ a new watch XADDs hub:wake to break the block

The wake stream lives as long as the process: it has a TTL (`hub_key_ttl_seconds`) that the
chores task renews, so a killed process leaves nothing behind for longer than that.

The hub is also the only Redis reader of the streams: a subscriber's replay and gap healing
(`XRANGE`) go through `events_after`, on a small blocking pool of the hub's own, so serving any
number of streams holds 1 + READERS Redis connections (named like the hub's client).

A subscriber's buffer is bounded (QUEUE_SIZE events, QUEUE_BYTES of event data): when it would
overflow, the hub stops pushing to it and marks
it `behind`; the subscriber then catches up with `XRANGE` on its own, so a slow client costs at
most one buffer of memory and never delays the others. Subscribers also heal any gap they see
(an event whose seq is not cursor + 1) with `XRANGE`, so the hub only has to be fast, not
perfect.

Waiters (`GET /runs/{id}/wait`) are lighter still: a future per waiter on the run's watch,
resolved with the terminal event when the hub reads it (or with None when the server stops). A
waiter costs no Redis or Postgres call while it waits: the hub's one `XREAD` serves it with the
subscribers. A watch remembers the terminal event it read (`ended`), so a waiter joining a watch
whose read has already passed its cursor still hears of the end.

The per-event path costs the hub one list append and at most one future wake-up per
subscriber: no asyncio.Queue, no timeout object per wait. A subscriber's idle keep-alive and its
stalled-send watchdog share one timer, re-armed only when it fires.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from api.admission import SLOT_TTL
from shared.models import Event
from shared.redis.client import REDIS_DOWN, REDIS_ERRORS, Redis, reply_word
from shared.redis.hub import HubIO
from shared.redis.keys import Keys

log = structlog.get_logger("longrun.api.hub")

QUEUE_SIZE = 512  # events buffered per subscriber before it is marked behind
QUEUE_BYTES = 1 << 20  # or this many bytes of event data, whichever comes first
BLOCK_MS = 5000
READ_COUNT = 1000
READERS = 2  # connections for subscribers' XRANGE (replay, gap healing)
SEND_TIMEOUT = 30.0  # a send blocked this long (the client stopped reading) ends the stream
LEASE_REFRESH = SLOT_TTL / 3
CHORE_TICK = 1.0  # how often the chores task looks for leases due for a refresh
WAKE_TTL = 30.0  # the wake stream outlives a killed process by at most this (see keep_alive)
LEASE_RELEASE_BUDGET = 2.0  # seconds given to pending releases when the hub closes

Chore = Callable[[], Awaitable[None]]


class Subscription:
    """One SSE client's view of a run: events the hub pushed and flags telling it why it woke.

    `wait()` returns when there is something to do: pending events, `behind` (re-read from
    Redis), `idle` (no delivery for `idle_seconds`: send a keep-alive), or `stopped` (server
    shutting down, client gone)."""

    __slots__ = (
        "_loop",
        "_timer",
        "_waiter",
        "active_at",
        "behind",
        "idle",
        "idle_seconds",
        "pending",
        "pending_bytes",
        "read_at",
        "run_id",
        "sending_since",
        "stalled",
        "stopped",
        "task",
    )

    def __init__(self, run_id: str, idle_seconds: float) -> None:
        self.run_id = run_id
        self.pending: list[Event] = []
        self.pending_bytes = 0
        self.behind = False
        self.idle = False
        self.stopped = False
        self.stalled = False
        self.read_at = 0.0  # monotonic time of the hub read that pushed the oldest pending event
        self._loop = asyncio.get_running_loop()
        self.active_at = self._loop.time()
        self.sending_since = 0.0  # loop time a send started, 0 when not sending
        self.idle_seconds = idle_seconds
        self.task: asyncio.Task[object] | None = None  # cancelled when a send stalls
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            self.active_at + idle_seconds, self._tick
        )

    def take(self) -> list[Event]:
        got, self.pending = self.pending, []
        self.pending_bytes = 0
        return got

    def wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        if self.pending or self.behind or self.idle or self.stopped:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def mark_active(self) -> None:
        self.active_at = self._loop.time()
        self.idle = False

    def stop(self) -> None:
        self.stopped = True
        self.wake()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        now = self._loop.time()
        if self.sending_since and now - self.sending_since >= SEND_TIMEOUT:
            self.stalled = True
            if self.task is not None:
                self.task.cancel()
            self._timer = None
            return
        due = self.active_at + self.idle_seconds
        if now >= due:
            self.idle = True
            self.wake()
            due = now + self.idle_seconds
        if self.sending_since:
            due = min(due, self.sending_since + SEND_TIMEOUT)
        self._timer = self._loop.call_at(due, self._tick)


@dataclass
class Watch:
    key: str
    last_seq: int
    subs: set[Subscription] = field(default_factory=set)
    ends: set[asyncio.Future[Event | None]] = field(default_factory=set)  # waiters
    ended: Event | None = None  # the terminal event, once read

    @property
    def unused(self) -> bool:
        return not self.subs and not self.ends


class Hub:
    def __init__(
        self, r: Redis, keys: Keys, waker: Redis | None = None, wake_ttl: float = WAKE_TTL
    ) -> None:
        # `r` is a dedicated client: its one connection sits in XREAD BLOCK; subscribers'
        # reads and the wake-ups share a small pool of READERS connections (`HubIO`). (`waker`
        # is accepted for compatibility and not used.)
        self.io = HubIO(r, keys, readers=READERS, wake_ttl_seconds=wake_ttl)
        self.keys = keys
        self.wake_ttl = wake_ttl
        self.watches: dict[str, Watch] = {}
        self._kept_alive = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._wake_sent = False  # a wake was sent since the current read's watches were taken
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        # Leases (a stream's per-user slot): refreshed and released by one task, so that
        # neither costs a Redis call on a stream's event path, nor a burst of concurrent calls
        # on the shared pool when many streams start or end at once. A lease's first refresh
        # falls at a random point of the second half of the period, so streams that connected
        # together do not all refresh in the same instant ever after.
        self._leases: dict[int, Chore] = {}
        self._refresh_due: dict[int, float] = {}
        self._lease_releases: dict[int, Chore] = {}
        self._lease_ids = itertools.count()
        self._releases: collections.deque[Chore] = collections.deque()
        self._chores_due = asyncio.Event()
        self._chores_task: asyncio.Task[None] | None = None
        # Called with the seconds from the hub's read to a subscriber taking the events.
        self.on_delivery: Callable[[float], None] | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(w.subs) for w in self.watches.values())

    @property
    def waiters(self) -> int:
        return sum(len(w.ends) for w in self.watches.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run())
        self._chores_task = asyncio.create_task(self._chores())

    def hold(self, refresh: Chore, release: Chore) -> int:
        """Keep a lease while a stream lives: `refresh` runs every LEASE_REFRESH seconds until
        `let_go`, then `release` runs once (all from the hub's chores task)."""
        lease = next(self._lease_ids)
        self._leases[lease] = refresh
        self._lease_releases[lease] = release
        jitter = random.uniform(0.5, 1.0)  # noqa: S311 (spreading load, not a secret)
        self._refresh_due[lease] = time.monotonic() + LEASE_REFRESH * jitter
        return lease

    def let_go(self, lease: int) -> None:
        self._leases.pop(lease, None)
        self._refresh_due.pop(lease, None)
        release = self._lease_releases.pop(lease, None)
        if release is not None:
            self._releases.append(release)
            self._chores_due.set()

    async def _chores(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._chores_due.wait(), CHORE_TICK)
            self._chores_due.clear()
            await self._run_releases()
            now = time.monotonic()
            if now - self._kept_alive >= self.wake_ttl / 3:
                self._kept_alive = now
                await _quietly(self.io.keep_alive)
            for lease in [k for k, due in self._refresh_due.items() if due <= now]:
                refresh = self._leases.get(lease)
                if refresh is not None:
                    self._refresh_due[lease] = time.monotonic() + LEASE_REFRESH
                    await _quietly(refresh)

    async def _run_releases(self) -> None:
        while self._releases:
            await _quietly(self._releases.popleft())

    def stop_streams(self) -> None:
        """End every stream between two events (server shutting down). Safe to call from a
        signal handler: the work is handed to the event loop."""
        self.stopping = True
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop_all)

    def _stop_all(self) -> None:
        for w in self.watches.values():
            for sub in w.subs:
                sub.stop()
            for end in w.ends:
                settle(end, None)

    async def close(self) -> None:
        for task in (self._task, self._chores_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for lease in list(self._lease_releases):
            self.let_go(lease)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._run_releases(), LEASE_RELEASE_BUDGET)
        await self.io.aclose()

    async def events_after(self, run_id: str, after_seq: int, count: int) -> list[Event]:
        """Up to `count` events of the run after `after_seq`, from Redis (XRANGE)."""
        return await self.io.events_after(run_id, after_seq, count)

    async def subscribe(self, run_id: str, cursor: int, idle_seconds: float) -> Subscription:
        sub = Subscription(run_id, idle_seconds)
        if self.stopping:
            sub.stopped = True
        key = self.keys.events(run_id)
        watch = self.watches.get(key)
        if watch is None:
            self.watches[key] = Watch(key, cursor, {sub})
            await self._wake()
        else:
            watch.subs.add(sub)
        return sub

    async def until_end(self, run_id: str, after_seq: int) -> asyncio.Future[Event | None]:
        """A future that the hub resolves with the run's terminal event once it reads it (the
        run's events after `after_seq` are watched), or with None when the server stops. The
        caller resolves it itself on its own timeout, and always hands it back (`forget`)."""
        end: asyncio.Future[Event | None] = asyncio.get_running_loop().create_future()
        if self.stopping:
            end.set_result(None)
            return end
        key = self.keys.events(run_id)
        watch = self.watches.get(key)
        if watch is None:
            self.watches[key] = Watch(key, after_seq, ends={end})
            await self._wake()
        else:
            watch.ends.add(end)
            if watch.ended is not None:
                settle(end, watch.ended)
        return end

    def forget(self, run_id: str, end: asyncio.Future[Event | None]) -> None:
        self._leave(run_id, lambda watch: watch.ends.discard(end))

    def delivered(self, sub: Subscription) -> None:
        """A subscriber took its pushed events: report the delivery lag."""
        if self.on_delivery is not None and sub.read_at:
            self.on_delivery(time.monotonic() - sub.read_at)

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._leave(sub.run_id, lambda watch: watch.subs.discard(sub))

    def _leave(self, run_id: str, remove: Callable[[Watch], None]) -> None:
        """Take a subscriber or waiter off the run's watch; the watch goes with its last."""
        key = self.keys.events(run_id)
        watch = self.watches.get(key)
        if watch is None:
            return
        remove(watch)
        if watch.unused:
            del self.watches[key]

    async def _wake(self) -> None:
        """Make the blocking read include the watches added since it was issued. One wake per
        read is enough (the next read names every watch there is then), so a burst of new
        subscribers costs one wake and one re-issued `XREAD`, not one of each per subscriber:
        the re-issued read names every watched stream, so that was O(watches) per new stream
        (bench.stream_ttft at 500 concurrent streams)."""
        self._changed.set()
        if self._wake_sent:
            return
        self._wake_sent = True
        try:
            await self.io.wake()
        except REDIS_DOWN:
            self._wake_sent = False  # the read fails too; the loop reads again anyway

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
            except REDIS_ERRORS as exc:
                log.warning("hub_read_failed", error=type(exc).__name__, reply=reply_word(exc))
                self._wake_all()  # subscribers fall back to their own reads
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _read_once(self) -> None:
        self._wake_sent = False  # a watch added from here on needs a wake of its own
        cursors = {w.key: w.last_seq for w in self.watches.values()}
        self._changed.clear()
        reply = await self.io.read(cursors, READ_COUNT, BLOCK_MS)
        read_at = time.monotonic()
        for key, events in reply:
            watch = self.watches.get(key)
            if watch is None:
                continue
            watch.last_seq = max(watch.last_seq, events[-1].seq)
            size = sum(len(e.data) for e in events)
            for sub in watch.subs:
                self._push(sub, events, read_at, size)
            if events[-1].terminal:  # (a run's log ends with its one terminal event)
                watch.ended = events[-1]
                for end in watch.ends:
                    settle(end, watch.ended)

    @staticmethod
    def _push(sub: Subscription, events: list[Event], read_at: float, size: int) -> None:
        if sub.behind:
            return  # already woken; it re-reads from Redis
        pending = sub.pending
        # (An empty buffer takes one read whatever its size: a single huge event still flows.)
        over = pending and sub.pending_bytes + size > QUEUE_BYTES
        if over or len(pending) + len(events) > QUEUE_SIZE:
            sub.behind = True  # keep what is buffered; the rest comes from XRANGE
        else:
            if not pending:
                sub.read_at = read_at
            pending.extend(events)
            sub.pending_bytes += size
        w = sub._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_all(self) -> None:
        for w in self.watches.values():
            for sub in w.subs:
                sub.behind = True
                sub.wake()


def settle(end: asyncio.Future[Event | None], value: Event | None) -> None:
    """Resolve a waiter's future unless it is resolved already."""
    if not end.done():
        end.set_result(value)


async def _quietly(chore: Chore) -> None:
    try:
        await chore()
    except Exception as exc:  # a lease chore must not end the chores task
        log.warning("hub_chore_failed", error=repr(exc))
