"""Registering tools (built-ins, entry points, `LONGRUN_TOOLS`) and choosing a run's tools
(`params.tools`): each registration is checked when it is loaded, and the choice is one pure
function the API calls at submit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from shared.tools import ENTRY_POINT_GROUP, load_tools, run_tools, tools_problem
from tests.tool_plugins import WEATHER_SCHEMA

BUILT_IN = ["calculator", "clock", "search_notes"]


def configured(value: str) -> tuple[str, ...]:
    return Settings.from_env({"LONGRUN_TOOLS": value}).tool_modules


def test_the_built_in_tools_are_registered_with_their_schemas() -> None:
    tools = load_tools()
    assert list(tools) == BUILT_IN
    calculator = tools["calculator"].definition()
    assert calculator["input_schema"]["required"] == ["expression"]


def test_a_tool_named_in_longrun_tools_is_registered_under_that_name() -> None:
    tools = load_tools(
        configured("forecast=tests.tool_plugins:weather, tests.tool_plugins:weather")
    )

    assert list(tools) == [*BUILT_IN, "forecast", "weather"]
    assert tools["forecast"].definition() == {
        "name": "forecast",
        "description": "Today's weather in a city.",
        "input_schema": WEATHER_SCHEMA,
    }
    assert tools["weather"].timeout_seconds == 5.0


def test_a_registration_overrides_a_built_in_of_the_same_name() -> None:
    tools = load_tools(configured("clock=tests.tool_plugins:weather"))
    assert list(tools) == BUILT_IN
    assert tools["clock"].description == "Today's weather in a city."


def test_a_tool_named_by_an_entry_point_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an installed distribution that declares a tool in the `longrun.tools` group
    dist = tmp_path / "longrun_test_tools-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: longrun-test-tools\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nforecast = tests.tool_plugins:weather\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    # When the registry is loaded
    tools = load_tools()

    # Then the tool is there, under the entry point's name
    assert "forecast" in tools
    assert tools["forecast"].input_schema == WEATHER_SCHEMA


@pytest.mark.parametrize(
    ("registration", "reason"),
    [
        ("x=tests.tool_plugins:not_a_tool", "not a shared.llm.tools.Tool"),
        ("x=tests.tool_plugins:bad_schema", "input_schema"),
        ("x=tests.tool_plugins:not_an_object_schema", "type 'object'"),
        ("x=tests.tool_plugins:bad_timeout", "timeout_seconds"),
        ("tests.tool_plugins:bad_name", "name"),
        ("x=tests.tool_plugins:not_callable", "callable"),
        ("x=tests.tool_plugins:missing", "cannot load"),
        ("x=tests.no_such_module:weather", "cannot load"),
        ("x=tests.tool_plugins", "package.module:attr"),
        ("bad name=tests.tool_plugins:weather", "name"),
    ],
)
def test_a_registration_that_is_not_a_valid_tool_stops_the_process_at_start_up(
    registration: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_tools(configured(registration))


# -- params.tools ---------------------------------------------------------------------------------

REGISTERED = ["calculator", "clock", "weather"]


@pytest.mark.parametrize(
    "params",
    [{}, {"tools": None}, {"tools": []}, {"tools": ["weather"]}, {"tools": REGISTERED}],
)
def test_a_choice_among_registered_tools_is_accepted(params: dict[str, Any]) -> None:
    assert tools_problem(REGISTERED, params) is None


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"tools": "weather"}, "params.tools must be a list of tool names"),
        ({"tools": {"weather": True}}, "params.tools must be a list of tool names"),
        ({"tools": ["weather", 1]}, "params.tools must be a list of tool names"),
        ({"tools": ["weather", "weather"]}, "params.tools names 'weather' more than once"),
        (
            {"tools": ["weather", "rm_rf"]},
            "params.tools names unknown tools ['rm_rf']; registered: calculator, clock, weather",
        ),
    ],
)
def test_a_choice_that_is_not_a_list_of_distinct_registered_names_is_refused(
    params: dict[str, Any], problem: str
) -> None:
    assert tools_problem(REGISTERED, params) == problem


def test_a_run_may_use_every_registered_tool_unless_params_tools_names_some() -> None:
    registry = load_tools(configured("tests.tool_plugins:weather"))

    assert list(run_tools(registry, {})) == [*BUILT_IN, "weather"]
    assert run_tools(registry, {}) is not registry  # a run's own: what it adds stays its own
    assert list(run_tools(registry, {"tools": ["weather", "clock"]})) == ["clock", "weather"]
    assert list(run_tools(registry, {"tools": []})) == []
    # What the API would have refused gives no tool at all, never more than asked for.
    assert list(run_tools(registry, {"tools": "weather"})) == []
    assert list(run_tools(registry, {"tools": ["weather", "gone"]})) == ["weather"]
