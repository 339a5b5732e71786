"""What a run of the agent loop remembers: this run's messages, the step it is in, the tool calls
of that step already done, and its usage totals; and how that is checkpointed and restored.

Checkpoint state (JSON, `"v": 1`): `messages` (this run's messages so far, Anthropic format,
starting with the user's input), `step` (the last step begun), `pending` (when the step's model
turn is done but not all of its tool calls: `calls` and the `results` finished so far; null
between steps) and `usage` (the totals below). `transcript` turns a state into messages the API
accepts (every tool_use answered), which is what the worker persists as the thread's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from shared.errors import AgentError
from shared.llm.model import ToolCall
from shared.llm.pricing import Usage

STATE_VERSION = 1


@dataclass(frozen=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    turns: int = 0

    def add(self, usage: Usage, cost: Decimal) -> Totals:
        return replace(
            self,
            input_tokens=self.input_tokens + usage.input_tokens,
            output_tokens=self.output_tokens + usage.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens
            + usage.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + usage.cache_read_input_tokens,
            cost_usd=self.cost_usd + cost,
            turns=self.turns + 1,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cost_usd": float(self.cost_usd),
            "turns": self.turns,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Totals:
        return cls(
            input_tokens=int(raw.get("input_tokens", 0)),
            output_tokens=int(raw.get("output_tokens", 0)),
            cache_creation_input_tokens=int(raw.get("cache_creation_input_tokens", 0)),
            cache_read_input_tokens=int(raw.get("cache_read_input_tokens", 0)),
            cost_usd=Decimal(str(raw.get("cost_usd", 0))),
            turns=int(raw.get("turns", 0)),
        )


@dataclass
class Pending:
    """A step between its model turn and the end of its tool calls."""

    calls: list[ToolCall]
    results: list[dict[str, Any]] = field(default_factory=list)

    def done_ids(self) -> set[str]:
        return {str(r.get("tool_use_id")) for r in self.results}


@dataclass
class LoopState:
    messages: list[dict[str, Any]]
    step: int = 0
    pending: Pending | None = None
    totals: Totals = field(default_factory=Totals)

    @classmethod
    def fresh(cls, user_input: str) -> LoopState:
        return cls(messages=[{"role": "user", "content": user_input}])

    def to_checkpoint(self) -> dict[str, Any]:
        pending = None
        if self.pending is not None:
            pending = {
                "calls": [
                    {"id": c.call_id, "name": c.name, "args": c.args, "raw": c.raw_args}
                    for c in self.pending.calls
                ],
                "results": list(self.pending.results),
            }
        return {
            "v": STATE_VERSION,
            "messages": list(self.messages),
            "step": self.step,
            "pending": pending,
            "usage": self.totals.as_dict(),
        }

    @classmethod
    def from_checkpoint(cls, step: int, raw: dict[str, Any]) -> LoopState:
        """Restore a saved state; AgentError(checkpoint_unreadable) when it is not ours."""
        try:
            if raw.get("v") != STATE_VERSION or not isinstance(raw.get("messages"), list):
                raise ValueError("unknown checkpoint version")
            pending = None
            if raw.get("pending"):
                calls = [
                    ToolCall(str(c["id"]), str(c["name"]), c.get("args"), str(c.get("raw", "")))
                    for c in raw["pending"]["calls"]
                ]
                pending = Pending(calls, list(raw["pending"].get("results", [])))
            return cls(
                messages=list(raw["messages"]),
                step=int(raw.get("step", step)),
                pending=pending,
                totals=Totals.from_dict(dict(raw.get("usage") or {})),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise AgentError(
                f"cannot resume from this checkpoint: {exc}", code="checkpoint_unreadable"
            ) from None


def tool_result(call_id: str, content: str, ok: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "content": content}
    if not ok:
        block["is_error"] = True
    return block


def transcript(state: LoopState, reason: str) -> list[dict[str, Any]]:
    """This run's messages, closed so the API accepts them as history: tool calls that never
    ran get an error result saying why (`reason`)."""
    if state.pending is None:
        return list(state.messages)
    done = state.pending.done_ids()
    results = list(state.pending.results) + [
        tool_result(c.call_id, f"not run: {reason}", ok=False)
        for c in state.pending.calls
        if c.call_id not in done
    ]
    return [*state.messages, {"role": "user", "content": results}]


def usable_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier runs' messages, starting at a plain user message: a window cut from a longer
    thread may begin with tool results (or an assistant turn) whose call it no longer holds,
    which the API would refuse."""
    for i, msg in enumerate(history):
        content = msg.get("content")
        if msg.get("role") != "user":
            continue
        blocks = content if isinstance(content, list) else []
        if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            return list(history[i:])
    return []
