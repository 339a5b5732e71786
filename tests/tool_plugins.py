"""Tools (and one agent) as a user's package would ship them, for the tests to register through
`LONGRUN_TOOLS`, `LONGRUN_AGENTS` or an entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from shared.agents.base import RunContext
from shared.llm.tools import Tool, ToolContext

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}


async def _forecast(args: dict[str, Any], tctx: ToolContext) -> dict[str, Any]:
    return {"city": args["city"], "forecast": "sunny", "unit": args.get("unit", "C")}


weather = Tool(
    name="weather",
    description="Today's weather in a city.",
    input_schema=WEATHER_SCHEMA,
    fn=_forecast,
    timeout_seconds=5.0,
)

# Registrations that must stop a process at start-up.
not_a_tool = "weather"
bad_schema = Tool(
    "bad",
    "a schema with an unknown type",
    {"type": "object", "properties": {"a": {"type": "uuid"}}},
    _forecast,
)
not_an_object_schema = Tool("bad", "takes a string", {"type": "string"}, _forecast)
bad_timeout = Tool("bad", "never waits", {"type": "object"}, _forecast, timeout_seconds=-1.0)
bad_name = Tool("no spaces allowed", "a name the API refuses", {"type": "object"}, _forecast)
not_callable = Tool("bad", "no function", {"type": "object"}, "fn")  # type: ignore[arg-type]


async def tool_lister(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """An agent that ends with the names of the tools its run was given."""
    yield {"type": "done", "output": list(ctx.tools)}
