"""The worker process: a member of the consumer group that runs up to `concurrency` attempts at
once and keeps them alive.

Loops, each its own task:
- consume: as many entries as there are free slots, from every queue shard in turn (each
  shard's pull promotes held runs by priority and round-robin across users, then
  `XREADGROUP >`: `shared.redis.group`);
- reclaim: `XAUTOCLAIM` entries idle past the lease (a dead worker's) on every shard; an
  entry delivered more than `max_attempts` times is dead-lettered by its attempt, once it
  holds the run (a run already ended is not);
- heartbeat: lease renewal of every entry it runs, in Redis only, and what a beat sees: a lease
  lost or out of time, an entry Redis lost, Redis restarted or failed over (`worker.liveness`);
- touch: the Postgres heartbeat of its runs (the reconciler's hint; cancels seen without
  Redis), on its own loop;
- cancel listener: pub/sub of cancel requests;
- reconciler: one worker at a time re-enqueues runs Postgres has as active but Redis lost;
  at once when this worker sees Redis restarted or its group gone, else periodically;
- webhooks: due deliveries of runs' terminal states, claimed from Postgres and sent
  (`worker.webhooks`);
- promoter: delayed runs that are due, taken from their set and enqueued (`worker.delayed`).
- ticker: the runs of due cron schedules, made in Postgres and enqueued (`worker.schedules`).
- retention: one worker at a time keeps the event archive's partitions ahead and deletes
  expired runs (`worker.retention`).

Shutdown is two-stage: the first SIGTERM/SIGINT drains (stop reading, let runs finish for
`drain_seconds`, hand the rest over at once), a second one exits immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
import uuid
from typing import Any

import structlog

from shared import logs
from shared.config import Settings
from shared.errors import Unavailable
from shared.redis.client import (
    REDIS_DOWN,
    REDIS_ERRORS,
    group_lost,
    reply_word,
)
from shared.redis.codec import QueueEntry
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store
from worker.attempt import AttemptState, Deps, execute
from worker.clients import Clients, logged
from worker.delayed import promote_forever
from worker.liveness import Liveness, Slot, info_ttl, renew_interval, take
from worker.policies import RETRYABLE
from worker.reconcile import reconcile_once
from worker.retention import retention_loop
from worker.schedules import Ticker
from worker.webhooks import Sender

log = structlog.get_logger("longrun.worker")

BLOCK_MS = 1000
# How long a cancelled background loop may take to end when the worker closes.
LOOP_STOP_SECONDS = 5.0
# The in-flight figure goes out when a slot fills or frees, at most this often (and with every
# heartbeat): `/health` and `/metrics` follow a run's end within about a second.
IN_FLIGHT_PUBLISH_SECONDS = 0.25


def consumer_name(settings: Settings) -> str:
    if settings.worker_name:
        return settings.worker_name
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.name = consumer_name(settings)
        self.slots: dict[str, Slot] = {}  # entry id -> slot
        self.acking: dict[str, Slot] = {}  # committed runs, their ack in flight
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self.free = asyncio.Event()
        self.free.set()
        self.load_changed = asyncio.Event()  # a slot filled or freed: publish the figure
        # Set when Redis may have lost data (restarted, group gone): the reconciler runs now.
        self.reconcile_now = asyncio.Event()
        self.liveness = Liveness(
            settings,
            self.name,
            self.slots,
            self.reconcile_now,
            lambda: self.rio,
            lambda: self.store,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.reads = 0  # XREADGROUP calls, and the entries they brought (batch_stats)
        self.read_entries = 0
        self._clients: Clients | None = None  # from `start` until `close`

    @property
    def clients(self) -> Clients:
        if self._clients is None:
            raise RuntimeError("the worker is not started")
        return self._clients

    @property
    def store(self) -> Store:
        return self.clients.store

    @property
    def rio(self) -> RedisIO:
        return self.clients.rio

    @property
    def deps(self) -> Deps:
        return self.clients.deps

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        structlog.contextvars.bind_contextvars(worker=self.name)
        self._clients = await Clients.open(s, self.keys, self.name)
        self._clients.failovers.on_switch.append(self.liveness.failover_announced)
        await self.liveness.start()
        loops = (self._consume, self._reclaim, self._reconcile, self._webhooks, self._retention)
        for loop in (*loops, self._promote, self._ticker):
            self._tasks.append(
                asyncio.create_task(self._forever(loop, self.stopping), name=loop.__name__)
            )
        # These keep serving in-flight runs while the worker drains.
        for loop in (self._heartbeat, self._touch, self._cancel_listener, self._publish_in_flight):
            self._tasks.append(
                asyncio.create_task(self._forever(loop, self.stopped), name=loop.__name__)
            )
        # What start-up allocated (modules, clients) lives as long as the process: keep it out
        # of the cyclic collector's full passes, which then cost ~40% less on a busy worker.
        gc.freeze()
        log.info("worker_started", concurrency=s.concurrency, queue=self.keys.queue)

    async def _forever(self, loop: Any, until: asyncio.Event) -> None:
        """Run a loop; on a Redis/Postgres outage back off and start it again."""
        delay = 0.1
        while not until.is_set():
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except RETRYABLE as exc:
                log.warning("loop_backoff", loop=loop.__name__, error=type(exc).__name__)
            except REDIS_ERRORS as exc:
                if group_lost(exc) and self._clients is not None:
                    # Redis lost the group (restarted empty, flushed): make it again, and
                    # re-enqueue the runs whose entries went with it.
                    self.reconcile_now.set()
                    log.warning("group_recreated")
                    self.reconcile_now.set()
                    with contextlib.suppress(*REDIS_DOWN):
                        await self.rio.ensure_group()
                else:  # an error reply the code does not expect (MOVED, WRONGTYPE, OOM ...)
                    log.warning("redis_error", loop=loop.__name__, reply=reply_word(exc))
            except Exception:
                log.exception("loop_crashed", loop=loop.__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), delay)
            delay = min(delay * 2, 2.0)

    async def drain(self) -> None:
        """Stop reading; give runs `drain_seconds`; hand the rest over; close."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("worker_draining", in_flight=len(self.slots))
        tasks = [s.task for s in self.slots.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.drain_seconds)
        for slot in list(self.slots.values()):
            slot.attempt.signals.handoff.set()
        remaining = [s.task for s in self.slots.values()]
        if remaining:
            await asyncio.wait(remaining, timeout=max(self.settings.lease_seconds, 5.0))
        await self.close()

    async def close(self) -> None:
        """Stop every loop and attempt, then close the clients. Always completes (and sets
        `stopped`): a step that fails is logged and the next one runs."""
        self.stopping.set()
        try:
            await self._stop_tasks()
            await self._close_clients()
        finally:
            self.stopped.set()
            log.info("worker_stopped", batches=self.batch_stats())

    async def _stop_tasks(self) -> None:
        await self.liveness.close()
        for t in self._tasks:
            t.cancel()
        # Bounded: a loop whose cancellation a library swallowed must not hold the shutdown.
        _, stuck = await asyncio.wait(self._tasks, timeout=LOOP_STOP_SECONDS)
        for t in stuck:
            log.warning("loop_did_not_stop", loop=t.get_name())
        if self.acking:  # committed runs: let their acks go
            await asyncio.wait([s.task for s in self.acking.values()], timeout=5)
        running = [slot.task for slot in [*self.slots.values(), *self.acking.values()]]
        for t in running:
            t.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await self._settle()

    async def _close_clients(self) -> None:
        if self._clients is not None:
            await logged("leave_workers", self._clients.rio.group.leave(self.name))
            await self._clients.close()

    async def _settle(self, limit: float = 5.0) -> None:
        """Let grouped writes already sent finish (a cancelled attempt's flush still runs)
        before the clients close under them."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self._clients is None or self._clients.idle:
                return
            await asyncio.sleep(0.01)

    def batch_stats(self) -> dict[str, float]:
        """Items per round trip of each grouped write (for logs and benches)."""
        out: dict[str, float] = {
            "reads": self.reads,
            "entries_per_read": round(self.read_entries / self.reads, 1) if self.reads else 0.0,
        }
        coalescers: list[Any] = []
        if self._clients is not None:
            writes = self._clients.deps.writes
            if self.rio.scripts is not None:
                coalescers.append(self.rio.scripts)
            coalescers += [writes.claims, writes.appends, writes.ends]
        for c in coalescers:
            out[f"{c.name}_flushes"] = c.flushes
            out[f"{c.name}_per_flush"] = round(c.items / c.flushes, 1) if c.flushes else 0.0
        return out

    # -- running attempts --------------------------------------------------------------------
    def _launch(
        self, entry: QueueEntry, leased_at: float, *, reclaimed: bool, deliveries: int = 1
    ) -> None:
        poison = deliveries > self.settings.max_attempts
        attempt = AttemptState(
            entry, reclaimed=reclaimed, poison=poison, leased_at=leased_at, deliveries=deliveries
        )
        task = asyncio.create_task(self._guarded(attempt, self.deps))
        earlier = self.slots.get(entry.entry_id)
        if earlier is not None:
            # This worker re-claimed its own entry (its lease ran out while Redis or the
            # process stalled): the earlier attempt is superseded and stops at its next write.
            earlier.attempt.signals.lost.set()
        self.slots[entry.entry_id] = Slot(attempt, task)
        attempt.on_committed = lambda: self._committed(attempt)
        attempt.on_short_tail = lambda: self.liveness.short_tails.add(attempt.run_id, attempt.seq)
        self.load_changed.set()
        if len(self.slots) >= self.settings.concurrency:
            self.free.clear()

    async def _guarded(self, attempt: AttemptState, deps: Deps) -> None:
        try:
            await execute(attempt, deps)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The entry stays pending: its lease expires and another attempt takes over.
            log.exception("attempt_failed", run_id=attempt.run_id)
        finally:
            if take(self.slots, attempt) is not None:
                self.load_changed.set()
            take(self.acking, attempt)
            self.free.set()
            attempt.release()

    def _committed(self, attempt: AttemptState) -> None:
        """A run's terminal state is committed: its slot takes the next entry while it acks
        (the ack is grouped with other Redis calls; a run lost before it is skipped when its
        entry is re-delivered)."""
        slot = take(self.slots, attempt)
        if slot is not None:
            self.liveness.recent_ends.add(slot.attempt.run_id, slot.attempt.seq)
            self.acking[attempt.entry.entry_id] = slot
            self.free.set()
            self.load_changed.set()

    def _free_slots(self) -> int:
        return max(0, self.settings.concurrency - len(self.slots))

    async def _consume(self) -> None:
        while not self.stopping.is_set():
            if self._free_slots() == 0:
                self.free.clear()
                await self.free.wait()
                continue
            asked = time.monotonic()
            entries = await self.rio.group.read(self.name, self._free_slots(), BLOCK_MS)
            if self.stopping.is_set():
                # Read after the drain began: hand straight back, not run.
                for entry in entries:
                    await self.rio.handoff(self.name, entry)
                return
            self.reads += 1
            self.read_entries += len(entries)
            for entry in entries:
                self._launch(entry, asked, reclaimed=False)

    async def _reclaim(self) -> None:
        s = self.settings
        lease_ms = int(s.lease_seconds * 1000)
        while not self.stopping.is_set():
            free = self._free_slots()
            if free:
                await self._reclaim_batch(lease_ms, free)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), renew_interval(s.lease_seconds))

    async def _reclaim_batch(self, lease_ms: int, count: int) -> None:
        """Re-claim from every shard in turn, up to `count` entries in all."""
        for shard in range(self.rio.group.covered):
            count = await self._reclaim_shard(shard, lease_ms, count)
            if count <= 0:
                return

    async def _reclaim_shard(self, shard: int, lease_ms: int, count: int) -> int:
        group = self.rio.group
        start = "0-0"
        while count > 0:
            asked = time.monotonic()
            start, entries = await group.reclaim(self.name, lease_ms, start, count, shard)
            for entry in entries:
                deliveries = await group.deliveries(entry.entry_id)
                await self.rio.count("reclaims")
                log.info("entry_reclaimed", run_id=entry.run_id, deliveries=deliveries)
                self._launch(entry, asked, reclaimed=True, deliveries=deliveries)
                count -= 1
            if start == "0-0":
                break
        return count

    async def _promote(self) -> None:
        await promote_forever(self.rio, self.settings.delay_poll_seconds, self.stopping)

    async def _webhooks(self) -> None:
        await Sender(self.settings, self.store).run(self.stopping)

    async def _ticker(self) -> None:
        await Ticker(self.settings, self.store, self.rio).run(self.stopping)

    async def _retention(self) -> None:
        await retention_loop(self.settings, self.store, self.stopping)

    async def _heartbeat(self) -> None:
        await self.liveness.run(self.stopped)

    async def _touch(self) -> None:
        """The Postgres heartbeat of this worker's runs: keeps live runs out of the
        reconciler's view and sees cancels recorded only in Postgres. Its own loop: a
        Postgres stall delays only this."""
        s = self.settings
        while not self.stopped.is_set():
            runs = [x.attempt.run_id for x in self.slots.values() if x.attempt.run is not None]
            with contextlib.suppress(Unavailable):
                for run_id in await self.store.runs.touch(runs):
                    for slot in self.slots.values():
                        if slot.attempt.run_id == run_id:
                            slot.attempt.signals.cancel.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), renew_interval(s.lease_seconds))

    async def _publish_in_flight(self) -> None:
        """The in-flight figure when a slot fills or frees, at most every
        IN_FLIGHT_PUBLISH_SECONDS, so readers need not wait for the next heartbeat."""
        while not self.stopped.is_set():
            await self.load_changed.wait()
            self.load_changed.clear()
            await self.rio.group.publish_in_flight(
                self.name, len(self.slots), info_ttl(self.settings)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), IN_FLIGHT_PUBLISH_SECONDS)

    async def _cancel_listener(self) -> None:
        async with self.rio.group.cancels() as feed:
            while not self.stopped.is_set():
                run_id = await feed.next(wait_seconds=1.0)
                if run_id is None:
                    continue
                for slot in self.slots.values():
                    if slot.attempt.run_id == run_id:
                        slot.attempt.signals.cancel.set()

    async def _reconcile(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_due(), self.settings.reconcile_seconds)
            if self.stopping.is_set():
                return
            now = self.reconcile_now.is_set()
            self.reconcile_now.clear()
            # Every worker, not only the reconciler's: a shard count raised elsewhere means
            # shards to read from now on.
            await self.rio.group.refresh_shards()
            await reconcile_once(self.settings, self.store, self.rio, self.name, urgent=now)

    async def _reconcile_due(self) -> None:
        """Returns when the worker stops or Redis may have lost data."""
        stop = asyncio.ensure_future(self.stopping.wait())
        now = asyncio.ensure_future(self.reconcile_now.wait())
        try:
            await asyncio.wait({stop, now}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            now.cancel()


async def run_worker(settings: Settings) -> int:
    worker = Worker(settings)
    structlog.contextvars.bind_contextvars(worker=worker.name)  # drain lines carry it too
    loop = asyncio.get_running_loop()
    signals_seen = 0
    drains: list[asyncio.Future[None]] = []

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("worker_forced_exit")
            logs.SINK.flush()
            os._exit(1)
        drains.append(asyncio.ensure_future(worker.drain()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await worker.start()
    await worker.stopped.wait()
    return 0
