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

Human in the loop: `value = await ctx.interrupt(payload, timeout_seconds=None, default=...)`
pauses the run for a person. The worker commits an `interrupt` event (`interrupt_id`,
`payload`), the run becomes `waiting` and is released (no slot, no lease, no queue entry). A
resume (`POST /runs/{id}/resume`) queues it again: the agent is called again from its
checkpoint and the same `ctx.interrupt(...)` call returns the value at once. A call is matched
to its answer by its payload and how many times this attempt asked that payload: an agent that
asks the same thing twice in one run should make the payloads differ (a step number). Past
`timeout_seconds` the call returns `default` when one was given, else the run ends `error`
code `interrupt_timeout`. Everything before the call must be checkpointed or repeatable: the
agent's code before it runs again on the resumed attempt.

Tools: `ctx.tools` holds the registered tools this run may use (`shared.tools`: the default set,
or those its `params.tools` names), filled by the worker whatever the agent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shared.config import Settings
from shared.errors import AgentError
from shared.llm.tools import ToolRegistry


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]


class CheckpointSaver(Protocol):
    def __call__(self, step: int, state: dict[str, Any]) -> Awaitable[None]: ...


async def _no_checkpoints(step: int, state: dict[str, Any]) -> None:
    return None


class _NoDefault:
    """`ctx.interrupt`'s default when the agent gives none (None is a value it may give)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Interrupt:
    """What an agent asks: validated by `RunContext.interrupt`, answered by the worker."""

    payload: Any
    timeout_seconds: float | None
    has_default: bool
    default: Any


class InterruptHandler(Protocol):
    """The worker's side of `ctx.interrupt`: the recorded answer, or the run paused (it never
    returns then: the attempt ends and a later one replays the call)."""

    def __call__(self, ask: Interrupt) -> Awaitable[Any]: ...


async def _no_interrupts(ask: Interrupt) -> Any:
    raise AgentError("this run cannot be interrupted here", code="interrupts_unsupported")


def interrupt_problem(settings: Settings, ask: Interrupt) -> str | None:
    """Why an interrupt cannot be asked (payload or default not JSON or too large, a timeout
    out of range), or None."""
    limit = settings.max_interrupt_bytes
    for name, value in (("payload", ask.payload), ("default", ask.default)):
        if name == "default" and not ask.has_default:
            continue
        try:
            size = len(orjson.dumps(value))
        except TypeError:
            return f"the interrupt's {name} is not JSON"
        if size > limit:
            return f"the interrupt's {name} is larger than {limit} bytes"
    t = ask.timeout_seconds
    if t is not None and (
        isinstance(t, bool)
        or not isinstance(t, int | float)
        or not math.isfinite(t)
        or not 0 < t <= settings.max_interrupt_seconds
    ):
        return f"timeout_seconds must be a number in (0, {settings.max_interrupt_seconds:g}]"
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
    # The worker's side of `interrupt` (see above); without a worker, interrupts are refused.
    interrupts: InterruptHandler = _no_interrupts

    async def interrupt(
        self, payload: Any, timeout_seconds: float | None = None, default: Any = NO_DEFAULT
    ) -> Any:
        """Pause the run until a person answers (see the module docstring); returns the value
        they gave, or `default` once `timeout_seconds` passed. AgentError `bad_interrupt` on a
        payload or default that is not JSON or too large, or a timeout out of range."""
        ask = Interrupt(payload, timeout_seconds, default is not NO_DEFAULT, default)
        problem = interrupt_problem(self.settings, ask)
        if problem is not None:
            raise AgentError(problem, code="bad_interrupt")
        return await self.interrupts(ask)

    @property
    def resumed(self) -> bool:
        return self.attempt > 1

    def idempotency_key(self, step: int, call: str | int) -> str:
        """Stable across attempts: a tool may use it to make a side effect happen once."""
        return f"{self.run_id}:{step}:{call}"


Agent = Callable[[RunContext], AsyncIterator[dict[str, Any]]]
