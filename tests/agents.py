"""Agents used only by tests, loaded by workers through LONGRUN_AGENTS."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from shared.agents.base import RunContext


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


async def bulky(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """`n` tokens of `size` characters each, as fast as they go: megabytes for a stream."""
    text = "x" * int(ctx.params.get("size", 1000))
    for _ in range(int(ctx.params.get("n", 100))):
        yield {"type": "token", "text": text}
    yield {"type": "done", "output": None}
