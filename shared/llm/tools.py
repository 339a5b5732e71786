"""Plug-in tools: what a tool is, a registry of them, the built-in ones, and running one call so
that nothing it does can crash the loop. (Which tools a deployment registers, and which of them a
run may use, is `shared.tools`.)

A tool is a name the Messages API accepts (1-64 of `[A-Za-z0-9_-]`), a description, the JSON
Schema of its input (an object; see `shared.llm.schema`), an async callable
`fn(args: dict, tctx: ToolContext) -> Any` and an optional timeout of its own. Its result goes
back to the model as text (a str as is, anything else as JSON); it signals a clean failure by
raising `ToolError`. An unknown tool name, arguments that are not a JSON object or do not match
the schema, a tool that runs past its timeout or raises: each becomes a `ToolOutcome` with
`ok=False` whose text the model reads as an error tool result. `ToolContext.idempotency_key` is
stable across attempts of the run, for tools with side effects.
"""

from __future__ import annotations

import ast
import asyncio
import math
import operator
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import orjson

from shared.errors import RunCancelled
from shared.llm.cancel import race
from shared.llm.schema import SchemaError, Validator, compile_schema, problem

PREVIEW_CHARS = 200
MAX_RESULT_CHARS = 20_000
# What the Messages API accepts as a tool name.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ToolError(Exception):
    """A tool's clean failure: the message is what the model reads."""


class InvalidTool(ValueError):
    """A tool definition the registry refuses; the message names the part at fault."""


@dataclass(frozen=True)
class ToolContext:
    run_id: str
    user_id: str
    step: int
    call_id: str
    idempotency_key: str
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


ToolFn = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    fn: ToolFn
    timeout_seconds: float | None = None
    # Each call waits for a person's approval first (the `chat` agent: `shared.llm.approval`).
    requires_approval: bool = False

    def definition(self) -> dict[str, Any]:
        """The tool as the Messages API takes it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }

    @cached_property
    def validator(self) -> Validator:
        """The compiled input_schema (checked on first use: `check_tool` does it at
        registration). SchemaError when it is not a valid schema of an object."""
        return compile_schema(self.input_schema)

    def problem(self, args: dict[str, Any]) -> str | None:
        """None when `args` satisfy the input_schema, else a one-line reason for the model."""
        return problem(self.validator, args)


def check_tool(tool: Any) -> None:
    """InvalidTool unless `tool` is a Tool the Messages API and `run_tool` can both use."""
    if not isinstance(tool, Tool):
        raise InvalidTool(f"{tool!r} is not a shared.llm.tools.Tool")
    if not isinstance(tool.name, str) or not TOOL_NAME.fullmatch(tool.name):
        raise InvalidTool(f"the name {tool.name!r} is not 1-64 of [A-Za-z0-9_-]")
    if not isinstance(tool.description, str):
        raise InvalidTool(f"{tool.name}: the description must be a string")
    if not isinstance(tool.requires_approval, bool):
        raise InvalidTool(f"{tool.name}: requires_approval must be a bool")
    if not callable(tool.fn):
        raise InvalidTool(f"{tool.name}: fn must be callable (an async function)")
    timeout = tool.timeout_seconds
    if timeout is not None and not (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and math.isfinite(timeout)
        and timeout > 0
    ):
        raise InvalidTool(f"{tool.name}: timeout_seconds must be a positive number or None")
    try:
        _ = tool.validator
    except SchemaError as exc:
        raise InvalidTool(f"{tool.name}: {exc}") from None


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    content: str
    # unknown_tool | bad_args | timeout | tool_failed | tool_crashed | rejected (by a person)
    error: str | None = None

    @property
    def preview(self) -> str:
        return self.content[:PREVIEW_CHARS]


class ToolRegistry(Mapping[str, Tool]):
    """Tools by name, in the order their names were first registered; each one checked
    (`check_tool`) when it is added, so InvalidTool surfaces at start-up."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        """Register `tool`, replacing one of the same name (in its place)."""
        check_tool(tool)
        self._tools[tool.name] = tool

    def only(self, names: Iterable[str]) -> ToolRegistry:
        """The registered tools among `names`, in registration order."""
        wanted = set(names)
        return ToolRegistry(t for name, t in self._tools.items() if name in wanted)

    def definitions(self) -> list[dict[str, Any]]:
        return [t.definition() for t in self._tools.values()]

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._tools)!r})"


def render(result: Any) -> str:
    text = result if isinstance(result, str) else orjson.dumps(result, default=str).decode()
    return text[:MAX_RESULT_CHARS]


async def run_tool(
    registry: Mapping[str, Tool],
    name: str,
    args: dict[str, Any] | None,
    tctx: ToolContext,
    *,
    default_timeout: float,
    cancelled: asyncio.Event,
) -> ToolOutcome:
    """One tool call, bounded by its timeout; RunCancelled when the run is cancelled meanwhile."""
    tool = registry.get(name)
    if tool is None:
        known = ", ".join(sorted(registry)) or "none"
        return ToolOutcome(False, f"unknown tool {name!r}; available: {known}", "unknown_tool")
    if args is None:
        return ToolOutcome(False, "the arguments were not a JSON object", "bad_args")
    reason = tool.problem(args)
    if reason is not None:
        return ToolOutcome(False, f"invalid arguments: {reason}", "bad_args")
    timeout = tool.timeout_seconds or default_timeout
    try:
        result = await race(tool.fn(args, tctx), cancelled, time_limit=timeout)
    except RunCancelled:
        raise
    except TimeoutError:
        return ToolOutcome(False, f"the tool did not finish within {timeout:g} s", "timeout")
    except ToolError as exc:
        return ToolOutcome(False, str(exc)[:MAX_RESULT_CHARS] or "the tool failed", "tool_failed")
    except Exception as exc:
        return ToolOutcome(False, f"the tool raised {type(exc).__name__}", "tool_crashed")
    return ToolOutcome(True, render(result))


# -- built-in tools ------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_INT_BITS = 4096


def evaluate(expression: str) -> int | float:
    """Arithmetic on numbers only (+ - * / // % **, parentheses); ToolError otherwise."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None

    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            number: int | float = node.value  # type: ignore[assignment]
            return number
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))  # type: ignore[no-any-return]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ToolError(f"exponent larger than {MAX_EXPONENT}")
            value: int | float = _BINARY[type(node.op)](left, right)
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
                raise ToolError("the result is too large")
            return value
        raise ToolError("only numbers and + - * / // % ** ( ) are allowed")

    try:
        return walk(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None


async def calculator(args: dict[str, Any], tctx: ToolContext) -> str:
    expression = str(args["expression"])
    return f"{expression} = {evaluate(expression)}"


async def clock(args: dict[str, Any], tctx: ToolContext) -> str:
    return tctx.now().astimezone(UTC).isoformat(timespec="seconds")


NOTES = (
    "longrun runs each agent run from a queue; POST /runs answers 202 with a run id.",
    "Events stream over SSE from GET /runs/{id}/events and resume with Last-Event-ID.",
    "A run checkpoints every completed step and resumes after the last one if its worker dies.",
    "Cancel a run with POST /runs/{id}/cancel; it ends with a cancelled event.",
    "Each run has a cost ceiling and each user a daily one; both end the run with an error.",
    "The chat agent calls tools: calculator, clock and search_notes work offline.",
)


async def search_notes(args: dict[str, Any], tctx: ToolContext) -> list[str]:
    query = str(args["query"]).lower().strip()
    limit = int(args.get("limit", 3))
    words = [w for w in query.split() if w]
    hits = [n for n in NOTES if all(w in n.lower() for w in words)]
    return hits[:limit] or [f"no note mentions {query!r}"]


def builtin_tools() -> list[Tool]:
    return [
        Tool(
            name="calculator",
            description="Evaluate an arithmetic expression (numbers, + - * / // % ** and "
            "parentheses) and return the result.",
            input_schema={
                "type": "object",
                "properties": {"expression": {"type": "string", "minLength": 1}},
                "required": ["expression"],
                "additionalProperties": False,
            },
            fn=calculator,
        ),
        Tool(
            name="clock",
            description="The current date and time in UTC (ISO 8601).",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            fn=clock,
        ),
        Tool(
            name="search_notes",
            description="Search longrun's built-in notes for lines containing every word of "
            "the query.",
            input_schema={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": 200},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            fn=search_notes,
        ),
    ]
