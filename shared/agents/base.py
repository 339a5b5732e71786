"""The agent protocol: what a run's code is given and what it gives back.

An agent is an async generator function `agent(ctx) -> AsyncIterator[dict]`. It yields event
bodies (`{"type": "token", "text": "..."}`, `tool_start`, `tool_end`, `usage`, `notice`); the
worker stamps `seq`, fences and appends them. It ends the run by yielding a terminal body
(`{"type": "done", "output": ...}` or `{"type": "error", "code": ..., "message": ...}`) or by
returning (then the run is `done` with `ctx.output`). Raising `AgentError` ends it as `error`
with that code; any other exception ends it as `error` code `agent_crashed`.

Resuming: a re-claimed run calls the agent again with `ctx.attempt > 1`, `ctx.checkpoint` (the
last state saved with `await ctx.save_checkpoint(step, state)`) and `ctx.last_event` (the last
event body appended by any attempt). The agent continues from there; it must not redo a step its
checkpoint records. `ctx.idempotency_key(step, call)` is stable across attempts, for tools with
side effects.

Tools: `ctx.tools` holds the registered tools this run may use (`shared.tools`: the default set,
or those its `params.tools` names), filled by the worker whatever the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.config import Settings
from shared.llm.tools import ToolRegistry


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]


class CheckpointSaver(Protocol):
    def __call__(self, step: int, state: dict[str, Any]) -> Awaitable[None]: ...


async def _no_checkpoints(step: int, state: dict[str, Any]) -> None:
    return None


@dataclass
class RunContext:
    """Everything an agent may use. Built by the worker; tests build it directly."""

    run_id: str
    user_id: str
    input: str
    params: dict[str, Any]
    settings: Settings
    attempt: int = 1
    thread_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    last_event: dict[str, Any] | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    save_checkpoint: CheckpointSaver = _no_checkpoints
    # The tools this run may use, by name (see above).
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    # Set by the agent for the final output when it returns without a terminal event.
    output: Any = None
    # Extra services a deployment hands to agents (e.g. the shared Anthropic client, breakers).
    services: dict[str, Any] = field(default_factory=dict)
    # Kept current by agents that spend money (chat): the run's usage totals, including a model
    # turn interrupted by a cancel, for the worker to record however the run ends.
    usage: dict[str, Any] = field(default_factory=dict)
    # Kept current by agents with a conversation (chat): the messages this run adds to its
    # thread (Anthropic format, every tool call answered), for the worker to persist.
    new_messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        return self.attempt > 1

    def idempotency_key(self, step: int, call: str | int) -> str:
        """Stable across attempts: a tool may use it to make a side effect happen once."""
        return f"{self.run_id}:{step}:{call}"


Agent = Callable[[RunContext], AsyncIterator[dict[str, Any]]]
