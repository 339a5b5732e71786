"""Agents used only by tests, loaded by workers through LONGRUN_AGENTS."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from shared.agents.base import RunContext
from shared.agents.chat import chat_config, chat_tools, services_for
from shared.llm.loop import LoopDeps, agent_loop
from shared.llm.model import TurnChunk, TurnRequest
from shared.llm.scripted import ScriptedTurn, play


async def side_effect(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """`steps` tool calls, each inserting one row keyed by its idempotency key, with a
    checkpoint after each; resumes after the last checkpointed step."""
    steps = int(ctx.params.get("steps", 5))
    delay = float(ctx.params.get("delay_ms", 100)) / 1000
    done = ctx.checkpoint.step if ctx.checkpoint else 0
    conn = await asyncpg.connect(ctx.settings.database_url)
    try:
        for step in range(done + 1, steps + 1):
            key = ctx.idempotency_key(step, "write")
            yield {"type": "tool_start", "name": "write", "args": {"step": step}, "call_id": key}
            await conn.execute(
                "INSERT INTO side_effects (key, run_id, step) VALUES ($1, $2, $3) "
                "ON CONFLICT (key) DO UPDATE SET duplicates = side_effects.duplicates + 1",
                key,
                ctx.run_id,
                step,
            )
            await asyncio.sleep(delay)
            yield {"type": "tool_end", "call_id": key, "ok": True}
            await ctx.save_checkpoint(step, {"step": step})
    finally:
        await conn.close()
    yield {"type": "done", "output": {"steps": steps}}


async def crasher(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """Kills its worker process outright: a poison run."""
    yield {"type": "token", "text": "about to crash"}
    await asyncio.sleep(0.05)
    os._exit(17)


async def raiser(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    yield {"type": "token", "text": "x"}
    raise RuntimeError("boom")


async def sleeper(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    yield {"type": "token", "text": "zz"}
    await asyncio.sleep(3600)
    yield {"type": "done"}


async def chatty(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    for i in range(int(ctx.params.get("n", 100))):
        yield {"type": "token", "text": f"t{i}"}


class AttemptModel:
    """A scripted model whose every word names the attempt that generated it and a nonce drawn
    per attempt (`a2.9f3c1e.s1.w07`): two attempts never produce the same text, so an event log
    that stitches two generations together shows it. Turns 1..`tool_turns` each call the
    calculator `calls` times; the next turn answers. The step is read from the conversation, so
    a resumed attempt goes on from its checkpoint."""

    def __init__(self, attempt: int, words: int, delay: float, tool_turns: int, calls: int) -> None:
        self.tag = f"a{attempt}.{secrets.token_hex(3)}"
        self.words = words
        self.delay = delay
        self.tool_turns = tool_turns
        self.calls = calls

    async def stream_turn(self, request: TurnRequest) -> AsyncIterator[TurnChunk]:
        step = 1 + sum(1 for m in request.messages if m.get("role") == "assistant")
        text = " ".join(f"{self.tag}.s{step}.w{i:02d}" for i in range(1, self.words + 1))
        calls: list[tuple[str, dict[str, Any] | str]] = []
        if step <= self.tool_turns:
            calls = [("calculator", {"expression": f"{step} * {i}"}) for i in range(self.calls)]
        turn = ScriptedTurn(text=text, calls=calls, delay=self.delay)
        async for chunk in play(turn, request, step):
            yield chunk


async def attempt_chat(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """The `chat` agent loop with the worker's own services (breakers, Postgres spend ledger,
    built-in tools) on an `AttemptModel`. `params`: `words` per turn (10), `delay_ms` per word
    (50), `tool_turns` (1), `calls` per tool turn (1). Checkpoints as `chat` does: after each
    model turn and each tool call."""
    svc = services_for(ctx)
    cfg = chat_config(ctx.settings, {}, prices=svc.prices)
    p = ctx.params
    model = AttemptModel(
        ctx.attempt,
        words=int(p.get("words", 10)),
        delay=float(p.get("delay_ms", 50)) / 1000,
        tool_turns=int(p.get("tool_turns", 1)),
        calls=int(p.get("calls", 1)),
    )
    tools = chat_tools(ctx.tools, {})
    deps = LoopDeps(model=model, breaker=svc.breaker, ledger=svc.ledger, tools=tools)
    async for body in agent_loop(ctx, cfg, deps):
        yield body


async def bulky(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """`n` tokens of `size` characters each, as fast as they go: megabytes for a stream."""
    text = "x" * int(ctx.params.get("size", 1000))
    for _ in range(int(ctx.params.get("n", 100))):
        yield {"type": "token", "text": text}
    yield {"type": "done", "output": None}


async def asker(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """`steps` side effects like `side_effect` (once each, by idempotency key, checkpointed),
    asking a person before step `ask_at` (`params.timeout_seconds`, `params.default`); the
    answer is kept in the checkpoint and is the run's output."""
    steps = int(ctx.params.get("steps", 4))
    ask_at = int(ctx.params.get("ask_at", 3))
    state = ctx.checkpoint.state if ctx.checkpoint else {}
    done = ctx.checkpoint.step if ctx.checkpoint else 0
    answer = state.get("answer")
    extra = {k: ctx.params[k] for k in ("default",) if k in ctx.params}
    conn = await asyncpg.connect(ctx.settings.database_url)
    try:
        for step in range(done + 1, steps + 1):
            if step == ask_at:
                answer = await ctx.interrupt(
                    {"question": "go on?", "step": step},
                    timeout_seconds=ctx.params.get("timeout_seconds"),
                    **extra,
                )
                yield {"type": "token", "text": f"answer:{answer}"}
            key = ctx.idempotency_key(step, "write")
            yield {"type": "tool_start", "name": "write", "args": {"step": step}, "call_id": key}
            await conn.execute(
                "INSERT INTO side_effects (key, run_id, step) VALUES ($1, $2, $3) "
                "ON CONFLICT (key) DO UPDATE SET duplicates = side_effects.duplicates + 1",
                key,
                ctx.run_id,
                step,
            )
            yield {"type": "tool_end", "call_id": key, "ok": True}
            yield {"type": "token", "text": str(step)}
            await ctx.save_checkpoint(step, {"answer": answer})
    finally:
        await conn.close()
    yield {"type": "done", "output": {"answer": answer}}


async def pauser(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """Asks at once (`params.timeout_seconds`, `params.default`, `params.payload`); the answer
    is the run's output. Its token is said once: a resumed attempt does not say it again."""
    if not ctx.resumed:
        yield {"type": "token", "text": "asking"}
    extra = {k: ctx.params[k] for k in ("default",) if k in ctx.params}
    answers = []
    for i in range(int(ctx.params.get("asks", 1))):  # `asks` > 1: then asks {"again": i}
        answers.append(
            await ctx.interrupt(
                ctx.params.get("payload", {"question": "ok?"}) if i == 0 else {"again": i},
                timeout_seconds=ctx.params.get("timeout_seconds"),
                **extra,
            )
        )
    yield {"type": "done", "output": {"answer": answers[0] if len(answers) == 1 else answers}}


async def cancelled_then_asks(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """A cancel that reached Postgres only (its Redis message lost), then an interrupt: the
    run must end cancelled, never wait."""
    yield {"type": "token", "text": "x"}
    conn = await asyncpg.connect(ctx.settings.database_url)
    try:
        await conn.execute(
            "UPDATE runs SET cancel_requested = true WHERE run_id = $1::uuid", ctx.run_id
        )
    finally:
        await conn.close()
    await ctx.interrupt({"question": "too late?"})
    yield {"type": "done"}
