"""An attempt's dependencies and state, shared by the two halves of its code: driving the agent
(`worker.executor.Attempt`) and ending the run (`worker.ending.EndingSteps`)."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.agents import Agent
from shared.agents.base import RunContext
from shared.config import Settings
from shared.llm.tools import ToolRegistry
from shared.models import Event, Run
from shared.redis.codec import QueueEntry
from shared.redis.runs import RedisIO
from shared.store import Store
from worker.batches import RunWrites
from worker.signals import Signals


@dataclass
class Deps:
    settings: Settings
    store: Store
    rio: RedisIO
    agents: dict[str, Agent]
    consumer: str
    tools: ToolRegistry  # every registered tool (shared.tools); a run gets its choice of them
    services: dict[str, Any] = field(default_factory=dict)
    # Claims and terminal commits grouped with other attempts' (None: one statement each).
    writes: RunWrites | None = None


class AttemptBase(ABC):
    """The state of one attempt at one run (see `worker.executor.Attempt`)."""

    def __init__(self, deps: Deps, entry: QueueEntry, *, reclaimed: bool, poison: bool) -> None:
        self.deps = deps
        self.entry = entry
        self.reclaimed = reclaimed
        self.poison = poison
        self.signals = Signals()
        self.run: Run | None = None
        self.seq = 0
        self.unarchived: list[Event] = []
        self.last_archive = time.monotonic()
        self.usage: dict[str, Any] = {}
        self.output_text: list[str] = []
        self.ctx: RunContext | None = None
        # Bodies yielded but not yet appended; appended by the flusher, a checkpoint, or
        # together with the terminal event. Never appended ones are simply not part of the
        # run (a re-claimed attempt resumes from what was appended).
        self.pending: list[dict[str, Any]] = []
        self.lock = asyncio.Lock()
        self.flusher: asyncio.Task[None] | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.flush_error: BaseException | None = None
        self.archiver: asyncio.Task[None] | None = None
        self.terminal_events: list[Event] = []
        # Called once the terminal state is committed (the worker frees the run's slot then;
        # the ack follows).
        self.on_committed: Callable[[], None] | None = None
        self.terminal_tried = False  # the terminal events were sent once, maybe landed
        # (owner, entry id) until the first append lands, when that append raises the fence
        # (`Fence.deferred`).
        self.first_write: tuple[str, str] | None = None

    @property
    def run_id(self) -> str:
        return self.entry.run_id

    def release(self) -> None:
        """Drop what ties the attempt's objects into reference cycles (its context's checkpoint
        closure refers back to the attempt), so they are freed when the attempt ends, not
        left to the cyclic collector: ~30 objects a run that made its full passes cost ~20%
        of a busy worker's CPU."""
        self.ctx = None
        self.on_committed = None

    def _deadline(self) -> float:
        """How long to ride out a Redis/Postgres outage before giving the run up to the
        lease (which moves it to a worker that can reach them)."""
        return time.monotonic() + max(self.deps.settings.lease_seconds, 5.0) * 4

    # Implemented by `worker.executor.Attempt`; the ending steps call them.
    @abstractmethod
    async def _archive_settled(self) -> None:
        """Wait for a background archive of the attempt's events."""

    @abstractmethod
    async def _append(
        self, events: list[Event], *, ttl: int, over_cap: bool = False, tried: bool = False
    ) -> bool:
        """Append events under the fence; whether a cancel was requested meanwhile."""
