"""A worker's hold on its runs and its view of Redis (`Liveness`): the heartbeat loop.

Each beat, every `renew_interval`:
- a worker that could not renew for most of a lease stops its runs itself, before another
  worker may re-claim them (`lease_expired_locally`); a run whose entry it read or re-claimed
  since its last renewal counts its lease from that moment;
- the owner-checked lease renewal of every entry it runs (Lua), in Redis only: a Postgres stall
  must not cost a lease. An entry another worker took stops its attempt; an entry Redis lost
  hands its run over at once (else nothing would re-claim it until the reconciler found it);
- after a failed beat or a failover Sentinel announced, and on every beat when Redis spans
  nodes (a cluster, or Sentinel, whose failover no failed call may report): Redis' run id.
  Another one means Redis restarted or failed over and may have lost entries and events: the
  reconciler runs now, and the tails of the runs this worker ended lately are healed from the
  archive (`worker.heal`);
- the tails of runs that ended without their end in Redis are mended (`ShortTails`);
- the worker's own heartbeat and figures (`/health`, `/metrics`, `longrun status`).
Healing and mending run as tasks of their own: a slow one never delays a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from shared.config import Settings
from shared.redis.client import REDIS_DOWN, REDIS_ERRORS
from shared.redis.runs import RedisIO
from shared.store import Store
from worker.attempt import AttemptState
from worker.heal import RecentEnds, ShortTails, heal_recent_ends

log = structlog.get_logger("longrun.worker")


@dataclass
class Slot:
    attempt: AttemptState
    task: asyncio.Task[None]


def take(slots: dict[str, Slot], attempt: AttemptState) -> Slot | None:
    """Remove the attempt's slot, keyed by its entry: only if it is this attempt's. An entry
    this worker re-claimed from itself has a newer attempt under the same key, which the
    earlier one, ending, must not take out (the newer one's end would go unrecorded, and
    unhealed after a failover)."""
    slot = slots.get(attempt.entry.entry_id)
    if slot is None or slot.attempt is not attempt:
        return None
    del slots[attempt.entry.entry_id]
    return slot


def renew_interval(lease: float) -> float:
    return max(lease / 3, 0.05)


def lease_expired_locally(last_renewal: float, now: float, lease: float) -> bool:
    """True when this worker could not renew for long enough that another worker may soon
    re-claim its entries: it must stop writing before that (80% of a lease)."""
    return now - last_renewal > lease * 0.8


def info_ttl(settings: Settings) -> int:
    """How long a worker's figures outlive its last heartbeat."""
    return int(settings.lease_seconds * 3) + 1


class Liveness:
    def __init__(
        self,
        settings: Settings,
        name: str,
        slots: Mapping[str, Slot],
        reconcile_now: asyncio.Event,
        rio: Callable[[], RedisIO],
        store: Callable[[], Store],
    ) -> None:
        self.settings = settings
        self.name = name
        self.slots = slots  # the worker's, read here
        self.reconcile_now = reconcile_now  # set when Redis may have lost data
        self._rio = rio  # the started worker's clients
        self._store = store
        self.last_renewal = time.monotonic()
        self.redis_run_id: str | None = None  # Redis' INFO run_id, to see a restart
        self.recent_ends = RecentEnds()  # runs ended lately, healed after a failover
        self.short_tails = ShortTails()  # runs that ended without their end in Redis
        self.redis_broken = False  # a beat failed since the last good one
        self._healing: asyncio.Task[None] | None = None
        self._mending: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Redis' run id as the worker starts: the one a later change is seen against."""
        self.redis_run_id = await self._rio().group.server_run_id()

    async def run(self, until: asyncio.Event) -> None:
        """Beat until `until` is set (the worker stopped: in-flight runs keep their leases
        while it drains). A beat that fails raises, for the caller's back-off."""
        while not until.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), renew_interval(self.settings.lease_seconds))

    def failover_announced(self) -> None:
        """Sentinel announced a new primary (`shared.redis.failover`, which also closed the
        connections to the old one): the next beat checks Redis' run id and heals the runs
        ended lately, as after a failed beat."""
        self.redis_broken = True

    async def close(self) -> None:
        """Stop healing and mending under way."""
        for chore in (self._healing, self._mending):
            if chore is not None:
                chore.cancel()
                await asyncio.gather(chore, return_exceptions=True)

    async def beat(self) -> None:
        rio = self._rio()
        now = time.monotonic()
        for slot in self.slots.values():
            # An entry read or re-claimed since the last renewal holds its lease from then:
            # one taken as Redis came back after an outage is not out of time.
            held_since = max(self.last_renewal, slot.attempt.leased_at)
            if lease_expired_locally(held_since, now, self.settings.lease_seconds):
                slot.attempt.signals.lost.set()
        try:
            lost, gone = await rio.renew(self.name, list(self.slots))
        except REDIS_DOWN:
            log.warning("heartbeat_failed")
            self.redis_broken = True
            raise
        self.last_renewal = now
        if self.redis_broken or rio.group.spans_nodes:
            # Cleared only once the run ids were read: a check that fails is made again.
            self.redis_broken = not await self._check_redis_restarted(self.redis_broken)
        for entry_id in lost:
            lost_slot = self.slots.get(entry_id)
            if lost_slot is not None:
                lost_slot.attempt.signals.lost.set()
                await rio.count("lease_losses")
        for entry_id in gone:
            # No one holds the entry any more (Redis lost it): hand the run over now, or
            # nothing would re-claim it until the reconciler found it.
            gone_slot = self.slots.get(entry_id)
            if gone_slot is not None and gone_slot.attempt.run is not None:
                log.warning("entry_lost", run_id=gone_slot.attempt.run_id, entry=entry_id)
                gone_slot.attempt.handoff_reason = "entry_lost"
                gone_slot.attempt.signals.handoff.set()
        if gone:
            self.reconcile_now.set()
        if self.short_tails and (self._mending is None or self._mending.done()):
            self._mending = asyncio.create_task(self._mend_short_tails())  # off this path
        figures = {
            "in_flight": len(self.slots),
            "concurrency": self.settings.concurrency,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        await rio.group.beat(self.name, figures, info_ttl(self.settings))

    async def _check_redis_restarted(self, after_outage: bool) -> bool:
        """If Redis is another process now (restarted, failed over), it may have lost entries:
        reconcile at once. Then, and after any outage (copies of ended runs may have failed),
        mend the tails of the runs ended lately. False when the run ids could not be read."""
        try:
            run_id = await self._rio().group.server_run_id()
        except REDIS_ERRORS as exc:
            log.warning("redis_run_id_unread", error=type(exc).__name__)
            return False
        restarted = run_id != self.redis_run_id
        if restarted:
            log.warning("redis_restarted")
            self.redis_run_id = run_id
            self.reconcile_now.set()
        if (restarted or after_outage) and (self._healing is None or self._healing.done()):
            self._healing = asyncio.create_task(self._heal_recent_ends())  # off this path
        return True

    async def _mend_short_tails(self) -> None:
        mended = await self.short_tails.mend(self.settings, self._store(), self._rio())
        if mended:
            log.info("redis_tails_mended", runs=mended)

    async def _heal_recent_ends(self) -> None:
        healed = await heal_recent_ends(
            self.settings, self._store(), self._rio(), self.recent_ends, self.short_tails
        )
        if healed:
            log.info("redis_tails_healed", runs=healed)
