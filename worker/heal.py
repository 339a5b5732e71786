"""Healing what a Redis failover lost of runs that already ended.

Redis replicates asynchronously: a primary that dies (Sentinel or a cluster then promote its
replica) takes with it the writes its replica had not received yet. For a run in flight that is
mended by its own next copy (the append script answers with the gap, the attempt copies what
Redis lacks from the archive). A run that ended in that window has no next copy: Redis may keep
its log without the last events, the terminal one among them, and a live reader would wait for
an end that Redis never gets. So a worker remembers the runs it ended lately (`RecentEnds`), and
when it sees Redis restarted or failed over it copies the lost tail of each from Postgres.
A run Redis lost entirely needs nothing: readers serve it from the archive.
"""

from __future__ import annotations

import collections
import time

import structlog

from shared.config import Settings
from shared.errors import Unavailable
from shared.redis.client import REDIS_ERRORS
from shared.redis.runs import AppendResult, RedisIO
from shared.store import Store

log = structlog.get_logger("longrun.worker")

# How long after its end a run is checked when Redis is found restarted (the failover's own
# time, the replication lag before it, and the heartbeat that notices it, with a margin), and
# how many such runs a worker remembers at most.
RECENT_END_SECONDS = 120.0
RECENT_END_MAX = 10_000
# At most this many of a run's newest events are copied (older ones stay a hole the archive
# fills, as for a run in flight).
TAIL_MAX = 1000


class RecentEnds:
    def __init__(self) -> None:
        self._ends: collections.deque[tuple[float, str, int]] = collections.deque(
            maxlen=RECENT_END_MAX
        )

    def add(self, run_id: str, last_seq: int) -> None:
        self._ends.append((time.monotonic(), run_id, last_seq))

    def since(self, seconds: float) -> list[tuple[str, int]]:
        horizon = time.monotonic() - seconds
        while self._ends and self._ends[0][0] < horizon:
            self._ends.popleft()
        return [(run_id, seq) for _, run_id, seq in self._ends]


async def heal_tail(
    settings: Settings, store: Store, rio: RedisIO, run_id: str, last_seq: int
) -> bool:
    """Copy what Redis lacks of an ended run's log (it holds a prefix only) from the archive;
    True when something was copied."""
    newest = await rio.last_events(run_id, 1)
    have = newest[0].seq if newest else 0
    if have == 0 or have >= last_seq:
        return False
    after = max(have, last_seq - TAIL_MAX)
    missing = await store.runs.events_after(run_id, after, last_seq - after)
    if not missing:
        return False
    res = await rio.append(
        run_id, 0, missing, ttl=settings.events_ttl_seconds, terminal=True, gaps=True
    )
    if isinstance(res, AppendResult):
        log.info("redis_tail_healed", run_id=run_id, from_seq=missing[0].seq, to_seq=last_seq)
        return True
    return False


# What keeps a short tail for the next heartbeat: Redis or Postgres away.
AWAY: tuple[type[BaseException], ...] = (*REDIS_ERRORS, Unavailable)


class ShortTails:
    """Runs that ended without their last events in Redis: the terminal copy failed after the
    commit (Redis away, or failing over, as they ended), after the failover was noticed and the
    recent ends healed. Each heartbeat copies their tails from the archive until Redis takes
    them; after RECENT_END_SECONDS they are left to the archive, as a run Redis lost is."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run_id: str, last_seq: int) -> None:
        self._runs[run_id] = (last_seq, time.monotonic())

    async def mend(self, settings: Settings, store: Store, rio: RedisIO) -> int:
        """`heal_tail` for each; a run is kept while Redis or Postgres is away. Returns how
        many were mended."""
        horizon = time.monotonic() - RECENT_END_SECONDS
        mended = 0
        for run_id, (last_seq, since) in list(self._runs.items()):
            if since >= horizon:
                try:
                    mended += await heal_tail(settings, store, rio, run_id, last_seq)
                except AWAY:
                    continue  # still away: the next heartbeat tries again
            del self._runs[run_id]
        return mended


async def heal_recent_ends(
    settings: Settings, store: Store, rio: RedisIO, ends: RecentEnds, retry: ShortTails
) -> int:
    """`heal_tail` for every run ended in the last RECENT_END_SECONDS. A run whose heal finds
    Redis or Postgres away goes to `retry` (the short tails, mended on every heartbeat until
    Redis takes them): the heal runs as the failover is noticed, which may be the moment a
    demoted primary closes its clients. Returns how many were healed now."""
    healed = 0
    for run_id, last_seq in ends.since(RECENT_END_SECONDS):
        try:
            healed += await heal_tail(settings, store, rio, run_id, last_seq)
        except AWAY:
            retry.add(run_id, last_seq)
    return healed
