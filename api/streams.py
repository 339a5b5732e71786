"""A run's event stream for one SSE client: replay after a cursor, then follow live, gapless.

Sources, in order of preference: the live hub (pushed events), Redis `XRANGE` through the hub's
reader pool (replay and gap healing), and the Postgres archive (when Redis no longer has the
events: expired, evicted, flushed). Events carry the same ids from every source, so a client can
switch sources across reconnects without noticing. No database connection is held between reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from api.hub import Hub
from api.subscription import Subscription
from shared.models import Event
from shared.redis.client import REDIS_DOWN
from shared.store import Store

PAGE = 500
# A hole (events after the cursor exist, the next one nowhere) is looked for again this many
# times, HOLE_WAIT apart, before the stream ends with an error: bounded work, never a spin.
HOLE_TRIES = 4
HOLE_WAIT = 0.25


class Hole(Exception):
    """Neither Redis nor the archive has this seq although later events exist."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"event {seq} is in neither Redis nor the archive")
        self.seq = seq


class RunStream:
    def __init__(
        self, store: Store, hub: Hub, run_id: str, idle_seconds: float, archived_seq: int = 0
    ) -> None:
        self.store = store
        self.hub = hub
        self.run_id = run_id
        self.idle_seconds = idle_seconds
        # The run's last seq Postgres had when last asked: below it, events exist even when
        # Redis has none (it lost or expired them).
        self.archived_seq = archived_seq
        self.sub: Subscription | None = None  # while `batches` runs

    async def _from_redis(self, cursor: int) -> list[Event]:
        try:
            return await self.hub.events_after(self.run_id, cursor, PAGE)
        except REDIS_DOWN:
            return []

    async def _catch_up(self, cursor: int, terminal_known: bool) -> list[Event]:
        """The next events after `cursor`, starting at `cursor + 1`: from Redis, or from the
        archive when Redis misses them (it expired, lost or never got them: Postgres commits
        every event before Redis sees it). [] when neither holds anything newer yet. Raises
        `Hole` when later events exist but neither source has `cursor + 1`."""
        events = await self._from_redis(cursor)
        if events and events[0].seq == cursor + 1:
            return events
        if not events and not terminal_known and cursor >= self.archived_seq:
            # Nothing newer in Redis nor, when last asked, in Postgres: a live run's next
            # event is still to come.
            return []
        archived = await self.store.runs.events_after(self.run_id, cursor, PAGE)
        if archived and archived[0].seq == cursor + 1:
            return archived
        if not events and not archived:
            return []
        raise Hole(cursor + 1)

    async def _patient_catch_up(self, cursor: int, terminal_known: bool) -> list[Event]:
        """`_catch_up`, looking for a hole again a few times before giving up (`Hole`)."""
        for tries_left in range(HOLE_TRIES - 1, -1, -1):
            try:
                return await self._catch_up(cursor, terminal_known)
            except Hole:
                if tries_left == 0:
                    raise
                await asyncio.sleep(HOLE_WAIT)
        raise AssertionError("unreachable")

    async def subscribe(self, after: int) -> Subscription:
        """Register with the hub (before the first read, so nothing is missed in between);
        `batches` does it when not done yet."""
        self.sub = await self.hub.subscribe(self.run_id, after, self.idle_seconds)
        return self.sub

    async def batches(
        self, after: int, terminal_known: bool
    ) -> AsyncGenerator[list[Event] | None, None]:
        """Yields the events after `after` in order, in batches (all that is ready at once),
        until the terminal one; yields None when idle for `idle_seconds` (the caller sends a
        keep-alive). Ends early, without the terminal event, when the subscription is stopped
        (`self.sub.stopped`: server shutdown or client gone).

        Two modes: catching up (XRANGE pages, healed from the archive) until Redis has
        nothing newer, then live (events the hub pushes, no Redis call per event). Any sign
        of a miss (a gap, the hub's buffer overflowed, an idle period) goes back to catching
        up."""
        cursor = after
        catching_up = True
        sub = self.sub or await self.subscribe(after)
        try:
            while not sub.stopped:
                if catching_up:
                    batch = await self._patient_catch_up(cursor, terminal_known)
                    if not batch:
                        if terminal_known:
                            return
                        catching_up = False
                        continue
                else:
                    await sub.wait()
                    batch = sub.take()
                    if batch:
                        self.hub.delivered(sub)
                    elif sub.stopped:
                        return
                    elif sub.behind:  # the hub dropped events for us: read them ourselves
                        sub.behind = False
                        catching_up = True
                        continue
                    elif sub.idle:
                        sub.mark_active()
                        run = await self.store.runs.get_run(self.run_id)
                        terminal_known = run is None or run.status.terminal
                        if run is not None:
                            self.archived_seq = run.last_seq
                        catching_up = True
                        yield None
                        continue
                    else:
                        continue
                out, gap, end = _in_order(batch, cursor)
                catching_up = catching_up or gap  # a gap: heal it from Redis or the archive
                if out:
                    cursor = out[-1].seq
                    sub.mark_active()
                    yield out
                if end:
                    return
        finally:
            self.hub.unsubscribe(sub)

    async def events(self, after: int, terminal_known: bool) -> AsyncIterator[Event | None]:
        """`batches`, one event at a time."""
        async for batch in self.batches(after, terminal_known):
            if batch is None:
                yield None
                continue
            for e in batch:
                yield e


def _in_order(batch: list[Event], cursor: int) -> tuple[list[Event], bool, bool]:
    """The events of `batch` that follow `cursor` without a gap, up to the terminal one;
    whether a gap stopped them; whether the terminal event is among them."""
    out: list[Event] = []
    for e in batch:
        if e.seq <= cursor:
            continue
        if e.seq != cursor + 1:
            return out, True, False
        cursor = e.seq
        out.append(e)
        if e.terminal:
            return out, False, True
    return out, False, False
