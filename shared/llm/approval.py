"""Tool calls a person approves first (the `chat` agent): what the run asks and how an answer
reads. Pure: the loop asks through `ctx.interrupt` and acts on the verdict.

A tool needs approval when it is registered with `requires_approval=True` or the run names it
in `params.require_approval`. The interrupt's payload is
`{"kind": "tool_approval", "tool", "args", "call_id", "step"}`; the answer (the resume's
`value`) is one of:
- `true`, `"approve"` or `{"approve": true}`: run the call as the model asked;
- `{"args": {...}}` (or with `"approve": true`): run it with these arguments instead;
- `false`, `"reject"` or `{"approve": false, "reason": "..."}`: do not run it; the model reads
  the rejection (and the reason) as the tool's result.
Anything else is read as a rejection, so an answer nobody meant as a yes runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class Verdict:
    approved: bool
    args: dict[str, Any] | None = None  # edited arguments (None: as the model asked)
    reason: str | None = None  # a rejection's reason, for the model


def approval_payload(tool: str, args: Any, call_id: str, step: int) -> dict[str, Any]:
    return {"kind": "tool_approval", "tool": tool, "args": args, "call_id": call_id, "step": step}


def verdict_of(value: Any) -> Verdict:
    """Read a person's answer to a `tool_approval` interrupt (see the module docstring)."""
    if value is True or value == "approve":
        return Verdict(True)
    if value is False or value == "reject":
        return Verdict(False)
    if isinstance(value, dict):
        approve = value.get("approve", "args" in value)
        args = value.get("args")
        if approve is True and (args is None or isinstance(args, dict)):
            return Verdict(True, args=args)
        if approve is False:
            reason = value.get("reason")
            return Verdict(False, reason=str(reason)[:MAX_REASON_CHARS] if reason else None)
    return Verdict(False, reason="the answer was not an approval")


def rejection_text(verdict: Verdict) -> str:
    """The tool result the model reads for a rejected call."""
    text = "The user rejected this tool call; it was not run."
    return f"{text} Reason: {verdict.reason}" if verdict.reason else text
