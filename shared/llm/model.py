"""The seam between the agent loop and a model: "stream one turn, given messages and tools".

A `ModelClient` turns a `TurnRequest` into an async stream of chunks: `TextDelta`s as text
arrives, `UsageUpdate`s (the turn's token counts so far: known from the first byte, so a turn
cut short by a cancel is still charged), and one final `TurnComplete` holding the assistant
message in Anthropic format. It raises `ProviderError` for every failure, already classified
(retryable or not, whether it counts against the breaker, the server's `retry-after`), so the
loop never sees an SDK exception. `anthropic_model.AnthropicModel` and `scripted.ScriptedModel`
implement it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import LongrunError
from shared.llm.pricing import Usage


@dataclass(frozen=True)
class TurnRequest:
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    system: str | None = None
    max_tokens: int = 4096


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class UsageUpdate:
    usage: Usage


@dataclass(frozen=True)
class ToolCall:
    """A tool_use block. `args` is None when the model's arguments were not a JSON object; then
    `raw_args` holds what it sent."""

    call_id: str
    name: str
    args: dict[str, Any] | None
    raw_args: str = ""


@dataclass(frozen=True)
class TurnComplete:
    model: str
    text: str
    tool_calls: tuple[ToolCall, ...]
    stop_reason: str | None
    usage: Usage
    # The assistant message to append to the conversation (Anthropic format).
    message: dict[str, Any]


TurnChunk = TextDelta | UsageUpdate | TurnComplete


class ProviderError(LongrunError):
    """A failed model call. `retryable`: another try may succeed; `breaker`: it says something
    about the provider's health (5xx, overload, rate limit, network), unlike a 400 of ours."""

    code = "provider_error"

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool,
        breaker: bool | None = None,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.retryable = retryable
        self.breaker = retryable if breaker is None else breaker
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after


class ModelClient(Protocol):
    def stream_turn(self, request: TurnRequest) -> AsyncIterator[TurnChunk]: ...


def assistant_message(text_parts: list[str], calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant turn as it goes back to the API: non-empty text, then the tool_use blocks
    (a call whose arguments were unreadable is replayed with empty input)."""
    content: list[dict[str, Any]] = []
    text = "".join(text_parts)
    if text:
        content.append({"type": "text", "text": text})
    for call in calls:
        content.append(
            {"type": "tool_use", "id": call.call_id, "name": call.name, "input": call.args or {}}
        )
    return {"role": "assistant", "content": content}
