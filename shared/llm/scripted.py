"""Models without a network, plugged in at the same seam as the SDK (`ModelClient`).

`ScriptedModel` plays a fixed list of turns, in order (tests: a deterministic script; a turn may
also raise a `ProviderError` or hang). `OfflineModel` is what `chat` runs without an
`ANTHROPIC_API_KEY`: a deterministic little "model" that reads the conversation, streams text
word by word and calls the built-in tools (`calculator` for arithmetic in the input, `clock`,
`search_notes`), then answers from their results, so the demo shows tool events offline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.llm.model import (
    ProviderError,
    TextDelta,
    ToolCall,
    TurnChunk,
    TurnComplete,
    TurnRequest,
    UsageUpdate,
    assistant_message,
)
from shared.llm.pricing import OFFLINE_MODEL, Usage


@dataclass(frozen=True)
class ScriptedTurn:
    """One model turn. `calls` are (name, args) with args a dict, or a str sent as raw JSON
    (so a test can send malformed arguments). `hang` stops the stream after the first text
    chunk until the consumer gives up (a cancel)."""

    text: str = ""
    calls: Sequence[tuple[str, dict[str, Any] | str]] = ()
    usage: Usage = field(default_factory=lambda: Usage(input_tokens=100, output_tokens=20))
    stop_reason: str | None = None
    error: ProviderError | None = None
    delay: float = 0.0
    hang: bool = False
    model: str | None = None


def _words(text: str) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if text else []


def _calls(turn: ScriptedTurn, step: int) -> list[ToolCall]:
    out: list[ToolCall] = []
    for i, (name, args) in enumerate(turn.calls):
        call_id = f"toolu_s{step}_{i}"
        if isinstance(args, str):
            try:
                parsed = orjson.loads(args)
            except orjson.JSONDecodeError:
                parsed = None
            out.append(ToolCall(call_id, name, parsed if isinstance(parsed, dict) else None, args))
        else:
            out.append(ToolCall(call_id, name, args, orjson.dumps(args).decode()))
    return out


async def play(turn: ScriptedTurn, request: TurnRequest, step: int) -> AsyncIterator[TurnChunk]:
    """Stream one scripted turn the way the SDK seam does."""
    if turn.error is not None:
        raise turn.error
    model = turn.model or request.model
    yield UsageUpdate(Usage(input_tokens=turn.usage.input_tokens))
    words = _words(turn.text)
    for i, word in enumerate(words):
        if turn.delay:
            await asyncio.sleep(turn.delay)
        yield TextDelta(word)
        if turn.hang and i == 0:
            await asyncio.Event().wait()
    if turn.hang and not words:
        await asyncio.Event().wait()
    calls = _calls(turn, step)
    stop = turn.stop_reason or ("tool_use" if calls else "end_turn")
    yield UsageUpdate(turn.usage)
    yield TurnComplete(
        model=model,
        text=turn.text,
        tool_calls=tuple(calls),
        stop_reason=stop,
        usage=turn.usage,
        message=assistant_message([turn.text], calls),
    )


class ScriptedModel:
    def __init__(self, turns: Sequence[ScriptedTurn]) -> None:
        self.turns = list(turns)
        self.requests: list[TurnRequest] = []

    async def stream_turn(self, request: TurnRequest) -> AsyncIterator[TurnChunk]:
        self.requests.append(request)
        if not self.turns:
            raise ProviderError("the scripted model has no turn left", retryable=False)
        turn = self.turns.pop(0)
        async for chunk in play(turn, request, len(self.requests)):
            yield chunk


# -- the offline demo model --------------------------------------------------------------------

_ARITHMETIC = re.compile(r"[-+(]*\d[\d.\s()+\-*/%]*[+\-*/%][\d.\s()+\-*/%]*\d\)*")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


def _tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The tool results of the last message, when it is a turn of tool results."""
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list) or not content:
        return None
    results = [b for b in content if b.get("type") == "tool_result"]
    return results or None


def offline_turn(messages: list[dict[str, Any]], tool_names: set[str]) -> ScriptedTurn:
    """The offline model's next turn, decided from the conversation alone (deterministic)."""
    results = _tool_results(messages)
    if results is not None:
        lines = []
        for r in results:
            status = "failed" if r.get("is_error") else "said"
            lines.append(f"the tool {status}: {str(r.get('content', ''))[:200]}")
        answer = "Here is what I found: " + "; ".join(lines) + ". (offline model)"
        return ScriptedTurn(text=answer, usage=_estimate(messages, answer))
    text = _last_user_text(messages)
    calls: list[tuple[str, dict[str, Any] | str]] = []
    match = _ARITHMETIC.search(text)
    if match and "calculator" in tool_names:
        calls.append(("calculator", {"expression": match.group(0).strip()}))
    if "clock" in tool_names:
        calls.append(("clock", {}))
    words = re.findall(r"[A-Za-z]{4,}", text)
    if words and "search_notes" in tool_names:
        longest = max(words, key=len)  # the first of the longest words: a crude topic
        calls.append(("search_notes", {"query": longest.lower()}))
    intro = f"You said: {text.strip()[:200]}. Let me check with my tools."
    if not calls:
        intro = f"You said: {text.strip()[:200]}. This is longrun's offline model."
    return ScriptedTurn(text=intro, calls=calls, usage=_estimate(messages, intro))


def _estimate(messages: list[dict[str, Any]], answer: str) -> Usage:
    """Rough token counts (4 characters a token), so the demo shows usage events."""
    prompt = len(orjson.dumps(messages)) // 4 + 1
    return Usage(input_tokens=prompt, output_tokens=len(answer) // 4 + 1)


class OfflineModel:
    def __init__(self, word_delay: float = 0.01) -> None:
        self.word_delay = word_delay

    async def stream_turn(self, request: TurnRequest) -> AsyncIterator[TurnChunk]:
        names = {str(t.get("name")) for t in request.tools}
        turn = offline_turn(request.messages, names)
        turn = ScriptedTurn(
            text=turn.text,
            calls=turn.calls,
            usage=turn.usage,
            delay=self.word_delay,
            model=OFFLINE_MODEL,
        )
        # The position in the conversation keeps call ids unique across a whole thread.
        async for chunk in play(turn, request, len(request.messages)):
            yield chunk
