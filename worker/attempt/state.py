"""One attempt's state and what it depends on. The functions of `worker.attempt` take both:
`drive` (claim, run the agent), `log` (its events: Postgres first, then Redis), `end` (the
run's terminal state, or a hand-over)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.agents import Agent
from shared.agents.base import Interrupt, RunContext
from shared.config import Settings
from shared.llm.tools import ToolRegistry
from shared.models import Event, Run
from shared.redis.codec import QueueEntry
from shared.redis.runs import RedisIO
from shared.store import Store
from worker.batches import RunWrites
from worker.signals import Signals

# How long an attempt rides out a Postgres or Redis outage (its writes wait, its lease is kept
# by the heartbeat, which needs only Redis) before it gives the run up to the lease: at least
# this long, and at least this many leases.
OUTAGE_SECONDS = 60.0
OUTAGE_LEASES = 10
# Events committed to Postgres that Redis has not taken yet (it was away) wait for the next
# copy; past this many the oldest are left to the archive (readers fill the hole from it).
UNSENT_MAX = 1000


@dataclass
class Deps:
    settings: Settings
    store: Store
    rio: RedisIO
    writes: RunWrites
    agents: dict[str, Agent]
    tools: ToolRegistry  # every registered tool (shared.tools); a run gets its choice of them
    consumer: str
    services: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class AttemptState:
    entry: QueueEntry
    reclaimed: bool
    # Delivered more than `max_attempts` times: once it holds the run, it dead-letters it and
    # ends it failed (`deliveries` says how often).
    poison: bool
    # When (monotonic) the worker asked Redis for the entry (the read or re-claim that gave it
    # this worker, and restarted its idle time): its lease runs from then or from the
    # worker's last renewal, whichever is later (`worker.liveness`).
    leased_at: float
    deliveries: int = 1
    signals: Signals = field(default_factory=Signals)
    run: Run | None = None
    # The run's log as Postgres has it: its last seq and its size in bytes (the caps).
    seq: int = 0
    event_bytes: int = 0
    # Events committed to Postgres that Redis has not taken yet (sent with the next copy).
    unsent: list[Event] = field(default_factory=list)
    # Bodies yielded but not yet committed; committed by the flusher, a checkpoint, or with
    # the terminal event. Ones never committed are not part of the run (a re-claimed attempt
    # resumes from what was committed).
    pending: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    output_text: list[str] = field(default_factory=list)
    ctx: RunContext | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flusher: asyncio.Task[None] | None = None
    linger: asyncio.TimerHandle | None = None
    flush_error: BaseException | None = None
    # The terminal batch, encoded once: every retry sends the same bytes.
    terminal_events: list[Event] = field(default_factory=list)
    # Called once the terminal state is committed (the worker frees the run's slot then; the
    # Redis copy and the ack follow).
    on_committed: Callable[[], None] | None = None
    # Called when the run ended without its last events in Redis (the terminal copy failed
    # after the commit): the worker mends that tail from the archive later (`worker.heal`).
    on_short_tail: Callable[[], None] | None = None
    # (owner, entry id) until the first copy to Redis lands, which raises the fence then
    # (`Fence.deferred`).
    first_write: tuple[str, str] | None = None
    # Whether this attempt has committed a batch of events yet (its first one lingers).
    committed_events: bool = False
    # Why a hand-over was asked for ("drain", or "entry_lost": Redis lost the queue entry).
    handoff_reason: str = "drain"
    # The interrupt the agent asked and nobody has answered yet: (what, key, interrupt id).
    asking: tuple[Interrupt, str, str] | None = None

    @property
    def run_id(self) -> str:
        return self.entry.run_id

    def release(self) -> None:
        """Drop what ties the attempt's objects into reference cycles (its context's checkpoint
        closure refers back to the state), so they are freed when the attempt ends, not left to
        the cyclic collector (~30 objects a run that made its full passes cost ~20% of a busy
        worker's CPU)."""
        self.ctx = None
        self.on_committed = None
        self.on_short_tail = None


def outage_seconds(settings: Settings) -> float:
    """How long to ride out an outage of Postgres or Redis."""
    return max(OUTAGE_SECONDS, settings.lease_seconds * OUTAGE_LEASES)


def outage_deadline(settings: Settings) -> float:
    """Until when (monotonic) to ride out an outage of Postgres or Redis."""
    return time.monotonic() + outage_seconds(settings)
