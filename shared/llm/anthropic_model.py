"""`AnthropicModel`: the model seam over the official SDK (`AsyncAnthropic`, one per process).

We stream with `messages.create(stream=True)` and fold the raw server events ourselves
(`TurnAccumulator`) rather than use `messages.stream()`: the SDK's helper parses the tool input
JSON on every delta and raises mid-stream on a malformed one, losing the whole turn, whereas a
malformed argument must become an error tool result the model can correct. The fold also
notices a stream that ends without `message_stop` (a cut connection) and reports it as a
retryable failure instead of a short answer.

The SDK's own retries are off (`max_retries=0`): `shared.llm.retry` decides. SDK and transport
exceptions become `ProviderError` in `classify`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import orjson

from shared.config import Settings
from shared.llm.model import (
    ProviderError,
    TextDelta,
    ToolCall,
    TurnChunk,
    TurnComplete,
    TurnRequest,
    UsageUpdate,
)
from shared.llm.pricing import Usage
from shared.llm.retry import is_retryable_status, parse_retry_after


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def merge_usage(current: Usage, reported: Any) -> Usage:
    """Counts on `message_start` and `message_delta` are cumulative: overwrite what is present."""
    out = current
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ):
        value = _int(getattr(reported, name, None))
        if value is not None:
            out = replace(out, **{name: value})
    return out


@dataclass
class _Block:
    kind: str
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


def parse_tool_args(raw: str) -> dict[str, Any] | None:
    """The tool input as an object, or None when it is not a JSON object."""
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class TurnAccumulator:
    """Folds raw stream events (SDK models, read by attribute) into chunks and a final turn."""

    requested_model: str
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    blocks: dict[int, _Block] = field(default_factory=dict)
    stop_reason: str | None = None
    finished: bool = False

    def feed(self, event: Any) -> list[TurnChunk]:
        etype = getattr(event, "type", None)
        if etype == "message_start":
            self.model = str(getattr(event.message, "model", "") or self.requested_model)
            self.usage = merge_usage(self.usage, event.message.usage)
            return [UsageUpdate(self.usage)]
        if etype == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                self.blocks[event.index] = _Block("tool_use", call_id=block.id, name=block.name)
            elif block.type == "text":
                self.blocks[event.index] = _Block("text", parts=[block.text] if block.text else [])
            return []
        if etype == "content_block_delta":
            return self._delta(event.index, event.delta)
        if etype == "message_delta":
            self.stop_reason = getattr(event.delta, "stop_reason", None) or self.stop_reason
            self.usage = merge_usage(self.usage, event.usage)
            return [UsageUpdate(self.usage)]
        if etype == "message_stop":
            self.finished = True
        return []

    def _delta(self, index: int, delta: Any) -> list[TurnChunk]:
        block = self.blocks.get(index)
        if block is None:
            return []
        if delta.type == "text_delta" and block.kind == "text":
            block.parts.append(delta.text)
            return [TextDelta(delta.text)]
        if delta.type == "input_json_delta" and block.kind == "tool_use":
            block.parts.append(delta.partial_json)
        return []

    def complete(self) -> TurnComplete:
        if not self.finished:
            raise ProviderError(
                "the model stream ended before message_stop", retryable=True, error_type="cut"
            )
        content: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        text: list[str] = []
        for _, block in sorted(self.blocks.items()):
            joined = "".join(block.parts)
            if block.kind == "text":
                if joined:
                    text.append(joined)
                    content.append({"type": "text", "text": joined})
                continue
            args = parse_tool_args(joined)
            calls.append(ToolCall(block.call_id, block.name, args, raw_args=joined))
            content.append(
                {"type": "tool_use", "id": block.call_id, "name": block.name, "input": args or {}}
            )
        return TurnComplete(
            model=self.model or self.requested_model,
            text="".join(text),
            tool_calls=tuple(calls),
            stop_reason=self.stop_reason,
            usage=self.usage,
            message={"role": "assistant", "content": content},
        )


def classify(exc: BaseException, now: datetime) -> ProviderError | None:
    """An SDK or transport exception as a ProviderError; None for anything else (a bug)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        etype = exc.type if isinstance(exc.type, str) else None
        # An `error` event inside an open stream arrives with the stream's status (200).
        code = None if status < 400 else status
        retryable = is_retryable_status(code, etype)
        headers = {k.lower(): v for k, v in exc.response.headers.items()}
        return ProviderError(
            f"{type(exc).__name__} ({status}, {etype}): {str(exc)[:300]}",
            retryable=retryable,
            status=status,
            error_type=etype,
            retry_after=parse_retry_after(headers, now) if retryable else None,
        )
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return ProviderError(f"{type(exc).__name__}: {exc}"[:300], retryable=True)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return ProviderError(f"unreadable answer: {exc}"[:300], retryable=True)
    return None


def create_client(settings: Settings) -> anthropic.AsyncAnthropic:
    """The process's SDK client: our retries only, bounded connect and read timeouts."""
    return anthropic.AsyncAnthropic(
        api_key=settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        max_retries=0,
        timeout=anthropic.Timeout(120.0, connect=10.0),
    )


class AnthropicModel:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.now = now

    async def stream_turn(self, request: TurnRequest) -> AsyncIterator[TurnChunk]:
        acc = TurnAccumulator(requested_model=request.model)
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": request.messages,
        }
        if request.tools:
            kwargs["tools"] = request.tools
        if request.system:
            kwargs["system"] = request.system
        try:
            stream = await self.client.messages.create(stream=True, **kwargs)
            async with stream:
                async for event in stream:
                    for chunk in acc.feed(event):
                        yield chunk
        except Exception as exc:
            err = classify(exc, self.now())
            if err is None:
                raise
            raise err from exc
        yield acc.complete()

    async def aclose(self) -> None:
        await self.client.close()
