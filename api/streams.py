"""A run's event stream for one SSE client: replay after a cursor, then follow live, gapless.

Sources, in order of preference: the live hub (pushed events), Redis `XRANGE` (replay and gap
healing), and the Postgres archive (when Redis no longer has the events: expired, evicted,
flushed). Events carry the same ids from every source, so a client can switch sources across
reconnects without noticing. No database connection is held between reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from api.hub import Hub, Subscription
from shared.models import Event
from shared.redisio import REDIS_DOWN, RedisIO
from shared.store import Store

PAGE = 500


class RunStream:
    def __init__(
        self, store: Store, rio: RedisIO, hub: Hub, run_id: str, idle_seconds: float
    ) -> None:
        self.store = store
        self.rio = rio
        self.hub = hub
        self.run_id = run_id
        self.idle_seconds = idle_seconds

    async def _from_redis(self, cursor: int) -> list[Event]:
        try:
            return await self.rio.events_after(self.run_id, cursor, PAGE)
        except REDIS_DOWN:
            return []

    async def _catch_up(self, cursor: int, terminal_known: bool) -> list[Event]:
        """The next events after `cursor` from Redis, healed from the archive when Redis
        misses the beginning (or everything, for a finished run)."""
        events = await self._from_redis(cursor)
        missing_head = bool(events) and events[0].seq > cursor + 1
        if missing_head or (not events and terminal_known):
            archived = await self.store.events_after(self.run_id, cursor, PAGE)
            if archived:
                return archived
        return [e for e in events if e.seq > cursor]

    async def events(self, after: int, terminal_known: bool) -> AsyncIterator[Event | None]:
        """Yields events after `after` until the terminal one; yields None when idle for
        `idle_seconds` (the caller may send a keep-alive).

        Two modes: catching up (XRANGE pages, healed from the archive) until Redis has
        nothing newer, then live (events the hub pushes, no Redis call per event). Any sign
        of a miss (a gap, the hub's queue overflowed, an idle period) goes back to catching
        up."""
        cursor = after
        sub: Subscription | None = None
        catching_up = True
        try:
            sub = await self.hub.subscribe(self.run_id, cursor)
            while True:
                if catching_up:
                    batch = await self._catch_up(cursor, terminal_known)
                    if not batch:
                        if terminal_known:
                            return
                        catching_up = False
                        continue
                else:
                    got = await self._wait_live(sub, cursor)
                    if got is None:
                        run = await self.store.get_run(self.run_id)
                        terminal_known = run is None or run.status.terminal
                        catching_up = True
                        yield None
                        continue
                    if not got:  # the hub dropped events for us: read them ourselves
                        catching_up = True
                        continue
                    batch = got
                for e in batch:
                    if e.seq <= cursor:
                        continue
                    if e.seq != cursor + 1:
                        catching_up = True  # a gap: heal it from Redis or the archive
                        break
                    cursor = e.seq
                    yield e
                    if e.terminal:
                        return
        finally:
            if sub is not None:
                self.hub.unsubscribe(sub)

    async def _wait_live(self, sub: Subscription, cursor: int) -> list[Event] | None:
        """Events pushed by the hub after `cursor`; [] when the hub says to re-read; None on
        idle timeout."""
        while True:
            sub.woken.clear()  # before draining: a push after this point wakes the wait
            drained: list[Event] = []
            while not sub.queue.empty():
                drained.append(sub.queue.get_nowait())
            fresh = [e for e in drained if e.seq > cursor]
            if fresh:
                self.hub.delivered(sub)
                return fresh
            if sub.behind:
                sub.behind = False
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.woken.wait(), self.idle_seconds)
                continue
            return None
