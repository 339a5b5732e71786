"""The event hub: one pub/sub connection per API process fans run events out to every local
SSE subscriber and waiter, instead of one blocked Redis connection per client.

    subscriber A ─┐                       ┌─ SSUBSCRIBE run-events:{r1}, run-events:{r2} ...
    subscriber B ─┼─ pending (bounded) <──┤   (one connection; a sharded channel per watched run)
    waiter C ─────┘                       └─ the append script SPUBLISHes each copy of events

A run is watched while it has a local subscriber or waiter: the hub subscribes to the run's
channel when the first arrives and unsubscribes when the last leaves (one control task sends
these in order, so a watch that leaves and comes back never ends unsubscribed). A notice names
the events added and, when small, carries them: the hub pushes them to the run's subscribers
with no Redis read at all; a notice without them (a big batch) sends the subscribers to read the
stream themselves. Nothing a watch costs grows with the number of other runs watched.

No gap, no duplicate: a subscriber registers, the hub waits for Redis to confirm the run's
subscription, and only then does the subscriber read what the stream already holds (its
catch-up `XRANGE`), then the notices; an event both read and announced is dropped by its seq
(`api.streams`), and a notice whose events the watch has passed is ignored. When the pub/sub
connection fails the hub opens another and subscribes every watched run again; each run's
confirmation sends its subscribers back to the stream from their own cursor and checks its
waiters' run for an end, so nothing published meanwhile is lost: the stream (and Postgres behind
it) is the truth, pub/sub only the wake-up.

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
resolved with the terminal event when a notice brings it (or with None when the server stops).
A waiter costs no Redis or Postgres call while it waits. A watch remembers the terminal event
(`ended`); once its subscription is confirmed with a waiter on it, the hub reads the run's last
event once (batched over runs, `XREVRANGE`), so a run that ended just before its channel was
subscribed is seen ended too.

The per-event path costs the hub one list append and at most one future wake-up per
subscriber (`api.subscription`): no asyncio.Queue, no timeout object per wait.
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
from api.subscription import Subscription
from shared.models import Event
from shared.redis.client import REDIS_ERRORS, Redis, reply_word
from shared.redis.hub import HubIO, Notice, Subscribed
from shared.redis.keys import Keys

log = structlog.get_logger("longrun.api.hub")

QUEUE_SIZE = 512  # events buffered per subscriber before it is marked behind
QUEUE_BYTES = 1 << 20  # or this many bytes of event data, whichever comes first
LISTEN_TIMEOUT = 5.0  # a pub/sub read returns this often with nothing (health checks)
SUBSCRIBE_WAIT = 2.0  # a subscriber waits this long at most for its run's confirmation
CHECK_BATCH = 5000  # runs whose end is read in one go
READERS = 2  # connections for subscribers' XRANGE (replay, gap healing)
LEASE_REFRESH = SLOT_TTL / 3
CHORE_TICK = 1.0  # how often the chores task looks for leases due for a refresh
LEASE_RELEASE_BUDGET = 2.0  # seconds given to pending releases when the hub closes

Chore = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class Watch:
    run_id: str
    last_seq: int  # the last seq a notice announced (or the first watcher's cursor)
    ready: asyncio.Future[None]  # resolved when Redis confirms the run's subscription
    subs: set[Subscription] = field(default_factory=set)
    ends: set[asyncio.Future[Event | None]] = field(default_factory=set)  # waiters
    ended: Event | None = None  # the terminal event, once seen
    checked: bool = False  # the run's last event was read (or is being) since `ready`
    stale: bool = False  # its subscription is being renewed on a new connection

    @property
    def unused(self) -> bool:
        return not self.subs and not self.ends


class _Reopen(Exception):
    """The pub/sub connection must be replaced (a command on it failed)."""


REOPEN_ON: tuple[type[BaseException], ...] = (*REDIS_ERRORS, _Reopen)


class Hub:
    def __init__(self, r: Redis, keys: Keys) -> None:
        # `r` is a dedicated client: its one connection is the pub/sub connection; subscribers'
        # reads share a small pool of READERS connections (`HubIO`).
        self.io = HubIO(r, keys, readers=READERS)
        self.keys = keys
        self.watches: dict[str, Watch] = {}
        # The subscriptions, as the control task keeps them: runs whose SSUBSCRIBE was sent
        # (and no SUNSUBSCRIBE since) on the current connection, and the confirmations still
        # to come per run. A run is confirmed when it is in `_sent` and owes none.
        self._sent: set[str] = set()
        self._awaiting: dict[str, int] = {}
        self._todo: dict[str, None] = {}  # runs whose subscription may need a change (ordered)
        self._todo_due = asyncio.Event()
        self._checks: dict[str, None] = {}  # runs whose last event is to be read (waiters)
        self._checks_due = asyncio.Event()
        self._broken = False  # a control command failed: the listener replaces the connection
        self.resyncs = 0  # watches subscribed again on a new connection (and re-read)
        self._tasks: list[asyncio.Task[None]] = []
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
        try:
            await self.io.open()
        except REDIS_ERRORS as exc:  # Redis away at start: the listener opens it later
            log.warning("hub_open_failed", error=type(exc).__name__, reply=reply_word(exc))
            self._broken = True
        for work in (self._listen, self._control, self._check_ends, self._chores):
            self._tasks.append(asyncio.create_task(work()))

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
        for task in self._tasks:
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

    # -- watchers ------------------------------------------------------------------------------
    async def subscribe(self, run_id: str, cursor: int, idle_seconds: float) -> Subscription:
        """A subscription to the run's events, returned once Redis confirmed the run's channel
        (or after SUBSCRIBE_WAIT: the subscriber is then sent back to the stream when the
        confirmation comes), so that the caller's catch-up read misses nothing."""
        sub = Subscription(run_id, idle_seconds)
        if self.stopping:
            sub.stopped = True
        watch = self._watch(run_id, cursor)
        watch.subs.add(sub)
        if not watch.ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(watch.ready), SUBSCRIBE_WAIT)
            except TimeoutError:
                sub.early = True
        return sub

    async def until_end(self, run_id: str, after_seq: int) -> asyncio.Future[Event | None]:
        """A future that the hub resolves with the run's terminal event once it sees it, or with
        None when the server stops. The caller resolves it itself on its own timeout, and always
        hands it back (`forget`)."""
        end: asyncio.Future[Event | None] = asyncio.get_running_loop().create_future()
        if self.stopping:
            end.set_result(None)
            return end
        watch = self._watch(run_id, after_seq)
        watch.ends.add(end)
        if watch.ended is not None:
            settle(end, watch.ended)
        elif watch.ready.done() and not watch.checked:
            self._check(watch)
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

    def _watch(self, run_id: str, cursor: int) -> Watch:
        watch = self.watches.get(run_id)
        if watch is not None:
            return watch
        loop = asyncio.get_running_loop()
        watch = self.watches[run_id] = Watch(run_id, cursor, loop.create_future())
        if run_id in self._sent and not self._awaiting.get(run_id):
            # Still subscribed from a watch that just left (its SUNSUBSCRIBE not sent yet):
            # the channel is live; what it announced meanwhile the watchers read themselves.
            self._ready(watch)
        else:
            self._want(run_id)
        return watch

    def _leave(self, run_id: str, remove: Callable[[Watch], None]) -> None:
        """Take a subscriber or waiter off the run's watch; the watch goes with its last."""
        watch = self.watches.get(run_id)
        if watch is None:
            return
        remove(watch)
        if watch.unused:
            del self.watches[run_id]
            self._want(run_id)

    def _want(self, run_id: str) -> None:
        """The run's subscription may have to change: the control task looks at it."""
        self._todo[run_id] = None
        self._todo_due.set()

    def _ready(self, watch: Watch) -> None:
        """The run's channel is confirmed: its watchers read what came before by themselves."""
        if not watch.ready.done():
            watch.ready.set_result(None)
        for sub in watch.subs:
            if sub.early:  # stopped waiting for the confirmation: it may have missed a notice
                sub.early = False
                sub.behind = True
                sub.wake()
        if watch.ends:
            self._check(watch)

    def _resync(self, watch: Watch) -> None:
        """The run's channel was subscribed again (a new connection): notices may have been
        lost, so its subscribers re-read the stream from their cursors, its end is looked for."""
        self.resyncs += 1
        for sub in watch.subs:
            sub.behind = True
            sub.wake()
        watch.checked = False
        if watch.ends:
            self._check(watch)

    def _check(self, watch: Watch) -> None:
        watch.checked = True
        self._checks[watch.run_id] = None
        self._checks_due.set()

    # -- the hub's tasks -----------------------------------------------------------------------
    async def _control(self) -> None:
        """Sends SSUBSCRIBE / SUNSUBSCRIBE for the runs whose watch came or went, all that
        are due in one write; each run's last state wins (a watch that left and came back
        before the write changes nothing)."""
        while True:
            await self._todo_due.wait()
            self._todo_due.clear()
            if self._broken or not self._todo:
                continue
            todo, self._todo = self._todo, {}
            watch, unwatch = [], []
            for run_id in todo:
                wanted, sent = run_id in self.watches, run_id in self._sent
                if wanted and not sent:
                    self._sent.add(run_id)
                    self._awaiting[run_id] = self._awaiting.get(run_id, 0) + 1
                    watch.append(run_id)
                elif sent and not wanted:
                    self._sent.discard(run_id)
                    unwatch.append(run_id)
            if not (watch or unwatch):
                continue
            try:
                await self.io.change(watch, unwatch)
            except REDIS_ERRORS as exc:
                log.warning("hub_subscribe_failed", error=type(exc).__name__)
                self._broken = True  # the listener opens a new connection

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            try:
                if self._broken:
                    raise _Reopen
                got = await self.io.listen(LISTEN_TIMEOUT)
                delay = 0.05
            except REOPEN_ON as exc:
                log.warning("hub_read_failed", error=type(exc).__name__, reply=reply_word(exc))
                self._wake_all()  # subscribers fall back to their own reads
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                await self._reopen()
                continue
            if got is None:
                continue
            if isinstance(got, Subscribed):
                self._subscribed(got.run_id)
            else:
                self._notice(got)

    async def _reopen(self) -> None:
        """A new pub/sub connection; every watched run is subscribed again on it."""
        try:
            await self.io.open()
        except REDIS_ERRORS:
            self._broken = True
            return
        self._broken = False
        self._sent.clear()
        self._awaiting.clear()
        for run_id, watch in self.watches.items():
            watch.stale = watch.ready.done()
            self._todo[run_id] = None
        self._todo_due.set()

    def _subscribed(self, run_id: str) -> None:
        owed = self._awaiting.get(run_id, 0)
        if owed > 1:
            self._awaiting[run_id] = owed - 1
            return  # a later SSUBSCRIBE of ours is still to be confirmed
        self._awaiting.pop(run_id, None)
        watch = self.watches.get(run_id)
        if run_id not in self._sent or watch is None:
            return  # let go since (its SUNSUBSCRIBE is on its way)
        if not watch.ready.done():
            self._ready(watch)
        elif watch.stale or not owed:
            # Subscribed again on a new connection (ours, or the client's own reconnect,
            # which subscribes every channel again unasked): notices may have been lost.
            watch.stale = False
            self._resync(watch)

    def _notice(self, notice: Notice) -> None:
        watch = self.watches.get(notice.run_id)
        if watch is None or notice.last <= watch.last_seq:
            return  # not watched, or nothing the watch has not had
        events = notice.events
        if events and notice.first <= watch.last_seq:
            events = events[watch.last_seq - notice.first + 1 :]
        watch.last_seq = notice.last
        if not events:  # announced without the events (too big): read from the stream
            for sub in watch.subs:
                sub.behind = True
                sub.wake()
            if watch.ends:
                self._check(watch)
            return
        read_at = time.monotonic()
        size = sum(len(e.data) for e in events)
        for sub in watch.subs:
            self._push(sub, events, read_at, size)
        if events[-1].terminal:  # (a run's log ends with its one terminal event)
            watch.ended = events[-1]
            for end in watch.ends:
                settle(end, watch.ended)

    async def _check_ends(self) -> None:
        """Reads the last event of runs whose waiters may have missed their end (one pipeline
        for many runs), and answers the waiters of those that ended."""
        delay = 0.05
        while True:
            await self._checks_due.wait()
            self._checks_due.clear()
            while self._checks:
                run_ids = list(itertools.islice(self._checks, CHECK_BATCH))
                for run_id in run_ids:
                    del self._checks[run_id]
                run_ids = [r for r in run_ids if r in self.watches]
                try:
                    last = await self.io.last_events(run_ids)
                    delay = 0.05
                except REDIS_ERRORS as exc:
                    log.warning("hub_check_failed", error=type(exc).__name__)
                    for run_id in run_ids:  # again, after a pause
                        self._checks[run_id] = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                for run_id, event in last.items():
                    watch = self.watches.get(run_id)
                    if watch is None or event is None or not event.terminal:
                        continue
                    watch.ended = event
                    for end in watch.ends:
                        settle(end, event)

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
