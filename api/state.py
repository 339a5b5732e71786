"""The API's typed lifespan state: what every request may use, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from api.coalesce import Coalesced
from api.hub import Hub
from shared.agents import Agent
from shared.config import Settings
from shared.llm.tools import ToolRegistry
from shared.redis.client import Redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store

if TYPE_CHECKING:  # the groups take requests whose checks read this state
    from api.submit.groups import SubmitGroups


@dataclass
class StreamGate:
    """The process's cap on `POST /runs/stream` answers in flight: like an in-process app's
    `asyncio.Semaphore` around its agent runs, but refusing past the cap (503) instead of
    queueing, so a saturated process says so at once and `/health` shows it (`in_flight`,
    `cap`) to whatever scales the API. Single-threaded: the event loop is the lock."""

    cap: int
    in_flight: int = 0

    def enter(self) -> bool:
        if self.in_flight >= self.cap:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


@dataclass
class AppState:
    settings: Settings
    keys: Keys
    store: Store
    redis: Redis  # shared by the io objects below; commands go through them
    rio: RedisIO
    hub: Hub
    agents: dict[str, Agent]
    tools: ToolRegistry  # every registered tool (shared.tools), to check params.tools
    streams: StreamGate  # `POST /runs/stream` answers in flight (`api.submit.stream`)
    submits: SubmitGroups | None = None  # grouped submits (`api.submit.groups`)
    shutting_down: bool = False
    key_cache: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Reads that many requests make at once (the waiters of a run when it ends: `api.wait`).
    coalesced: Coalesced = field(default_factory=Coalesced)
