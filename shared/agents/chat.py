"""`chat`: the default agent. Until the Anthropic loop lands this is an offline scripted reply
streamed word by word, so the demo works without a network or a key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from shared.agents.base import RunContext


async def chat(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    reply = f"You said: {ctx.input.strip()[:200]}. This is longrun's offline model."
    parts = reply.split(" ")
    text = []
    for i, word in enumerate(parts):
        piece = word if i == 0 else " " + word
        text.append(piece)
        await asyncio.sleep(0.01)
        yield {"type": "token", "text": piece}
    yield {"type": "done", "output": "".join(text)}
