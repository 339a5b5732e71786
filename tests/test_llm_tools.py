"""Plug-in tools: the registry, argument validation, the built-ins, and running one call so that
nothing it does can crash the loop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.errors import RunCancelled
from shared.llm.schema import SchemaError, compile_schema, problem
from shared.llm.tools import (
    InvalidTool,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    builtin_tools,
    evaluate,
    run_tool,
)

TCTX = ToolContext(
    run_id="run",
    user_id="user",
    step=1,
    call_id="call",
    idempotency_key="run:1:call",
    now=lambda: datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
)


async def call(
    registry: ToolRegistry, name: str, args: dict[str, Any] | None, timeout: float = 5.0
) -> Any:
    return await run_tool(
        registry, name, args, TCTX, default_timeout=timeout, cancelled=asyncio.Event()
    )


@pytest.mark.parametrize(
    ("expression", "value"),
    [("6*7", 42), ("(2+3)*4", 20), ("7/2", 3.5), ("7//2", 3), ("-2**3", -8), ("10 % 4", 2)],
)
def test_the_calculator_does_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "only numbers"),
        ("x + 1", "only numbers"),
        ("True + 1", "only numbers"),
        ("(1).real", "only numbers"),
        ("2 ** 1000", "exponent larger"),
        ("(9**99)**99**1", "too large"),
        ("1/0", "division by zero"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 201, "longer than"),
    ],
)
def test_the_calculator_refuses_anything_but_bounded_arithmetic(
    expression: str, reason: str
) -> None:
    with pytest.raises(ToolError, match=reason):
        evaluate(expression)


async def test_the_built_in_tools_answer_offline() -> None:
    tools = ToolRegistry(builtin_tools())
    assert (await call(tools, "calculator", {"expression": "6*7"})).content == "6*7 = 42"
    assert (await call(tools, "clock", {})).content == "2026-03-04T05:06:07+00:00"
    notes = await call(tools, "search_notes", {"query": "cancel"})
    assert notes.ok
    assert "POST /runs/{id}/cancel" in notes.content


def test_arguments_are_checked_against_the_tools_schema() -> None:
    calculator = builtin_tools()[0]
    assert calculator.problem({"expression": "1"}) is None
    assert calculator.problem({}) == "arguments: 'expression' is a required property"
    assert calculator.problem({"expression": 1}) == "expression: 1 is not of type 'string'"
    assert calculator.problem({"expression": ""}) == "expression: '' should be non-empty"
    assert calculator.problem({"expression": "1", "x": 2}) == (
        "arguments: Additional properties are not allowed ('x' was unexpected)"
    )


def test_a_tool_with_an_invalid_schema_is_refused_at_registration() -> None:
    async def fn(args: dict[str, Any], tctx: ToolContext) -> str:
        return ""

    with pytest.raises(InvalidTool, match=r"input_schema\.properties\.a\.type"):
        ToolRegistry([Tool("bad", "bad", {"type": "object", "properties": {"a": {"type": 1}}}, fn)])


async def test_every_way_a_call_can_go_wrong_is_an_outcome_not_an_exception() -> None:
    async def fails(args: dict[str, Any], tctx: ToolContext) -> str:
        raise ToolError("the thing is broken")

    async def crashes(args: dict[str, Any], tctx: ToolContext) -> str:
        raise ValueError("internal detail")

    async def hangs(args: dict[str, Any], tctx: ToolContext) -> str:
        await asyncio.Event().wait()
        return ""

    async def stubborn(args: dict[str, Any], tctx: ToolContext) -> str:
        # Swallows its cancellation: the loop must not wait for it anyway.
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)
                return "late"

    schema: dict[str, Any] = {"type": "object"}
    tools = ToolRegistry(
        [
            Tool("fails", "", schema, fails),
            Tool("crashes", "", schema, crashes),
            Tool("hangs", "", schema, hangs, timeout_seconds=0.05),
            Tool("stubborn", "", schema, stubborn, timeout_seconds=0.05),
        ]
    )
    outcomes = {
        name: await call(tools, name, {})
        for name in ("fails", "crashes", "hangs", "stubborn", "missing")
    }
    assert {n: (o.ok, o.error) for n, o in outcomes.items()} == {
        "fails": (False, "tool_failed"),
        "crashes": (False, "tool_crashed"),
        "hangs": (False, "timeout"),
        "stubborn": (False, "timeout"),
        "missing": (False, "unknown_tool"),
    }
    assert outcomes["fails"].content == "the thing is broken"
    assert "internal detail" not in outcomes["crashes"].content
    assert (await call(tools, "fails", None)).error == "bad_args"


async def test_a_cancel_interrupts_a_running_tool() -> None:
    started = asyncio.Event()

    async def slow(args: dict[str, Any], tctx: ToolContext) -> str:
        started.set()
        await asyncio.sleep(3600)
        return ""

    cancelled = asyncio.Event()
    tools = ToolRegistry([Tool("slow", "", {"type": "object"}, slow)])
    task = asyncio.create_task(
        run_tool(tools, "slow", {}, TCTX, default_timeout=3600, cancelled=cancelled)
    )
    await started.wait()
    cancelled.set()
    with pytest.raises(RunCancelled):
        await asyncio.wait_for(task, 1.0)


async def test_a_tool_gets_the_runs_idempotency_key() -> None:
    seen: list[str] = []

    async def charge(args: dict[str, Any], tctx: ToolContext) -> dict[str, bool]:
        seen.append(tctx.idempotency_key)
        return {"charged": True}

    tools = ToolRegistry([Tool("charge", "", {"type": "object"}, charge)])
    outcome = await call(tools, "charge", {})
    assert outcome.content == '{"charged":true}'
    assert seen == ["run:1:call"]


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        ({"type": "integer"}, 3, None),
        ({"type": "integer"}, 3.0, None),
        ({"type": "integer"}, 3.5, "x: 3.5 is not of type 'integer'"),
        ({"type": "integer"}, True, "x: True is not of type 'integer'"),
        ({"type": ["string", "null"]}, None, None),
        ({"enum": ["a", "b"]}, "c", "x: 'c' is not one of ['a', 'b']"),
        ({"type": "number", "maximum": 10}, 11, "x: 11 is greater than the maximum of 10"),
        ({"type": "string", "pattern": "^[a-z]+$"}, "A1", "x: 'A1' does not match '^[a-z]+$'"),
        (
            {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            ["a", 2],
            "x/1: 2 is not of type 'string'",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "object", "required": ["b"]}}},
            {"a": {}},
            "x/a: 'b' is a required property",
        ),
        (
            {"type": "object", "additionalProperties": {"type": "integer"}},
            {"y": 1, "z": "2"},
            "x/z: '2' is not of type 'integer'",
        ),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, 1, None),
    ],
)
def test_the_whole_of_json_schema_is_enforced(
    schema: dict[str, Any], value: Any, expected: str | None
) -> None:
    # Each schema as the property `x` of a tool's object schema.
    validator = compile_schema({"type": "object", "properties": {"x": schema}})
    assert problem(validator, {"x": value}) == expected


def test_references_resolve_within_the_schema_and_are_never_fetched() -> None:
    local = compile_schema(
        {
            "type": "object",
            "$defs": {"n": {"type": "integer"}},
            "properties": {"x": {"$ref": "#/$defs/n"}},
        }
    )
    assert problem(local, {"x": "1"}) == "x: '1' is not of type 'integer'"
    remote = compile_schema(
        {"type": "object", "properties": {"x": {"$ref": "http://127.0.0.1:9/schema.json"}}}
    )
    assert problem(remote, {"x": 1}) == (
        "the arguments could not be checked: the tool's schema cannot be applied"
    )


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string"},
        [],
        {"properties": {}},
        {"type": "object", "properties": {"a": {"type": "uuid"}}},
        {"type": "object", "required": "a"},
    ],
)
def test_a_schema_that_is_invalid_or_not_of_an_object_is_refused(schema: Any) -> None:
    with pytest.raises(SchemaError):
        compile_schema(schema)
