"""Registered tools end to end: a real API and worker, the real `anthropic` SDK talking to the
local fake of the Messages API (tests/fake_anthropic.py). A tool registered with `LONGRUN_TOOLS`
is offered to the model with its schema and called; `params.tools` narrows what a run may use
and is refused at submit when it names anything but distinct registered tools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from shared.config import Settings
from shared.store import Store
from tests.conftest import ApiServer
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.helpers import Got, read_events, submit
from tests.tool_plugins import WEATHER_SCHEMA
from worker.main import Worker

BUILT_IN = ["calculator", "clock", "search_notes"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def deployment(settings: Settings, fake: FakeAnthropic) -> Settings:
    """The test's settings, with `weather` registered through the environment variable."""
    env = {
        "LONGRUN_TOOLS": "weather=tests.tool_plugins:weather",
        "LONGRUN_AGENTS": "tool_lister=tests.tool_plugins:tool_lister",
    }
    registered = Settings.from_env(env)
    return settings.with_(
        anthropic_api_key="test-key",
        anthropic_base_url=fake.url,
        tool_modules=registered.tool_modules,
        agent_modules=registered.agent_modules,
    )


@pytest.fixture
async def client(
    deployment: Settings,
    api_factory: Callable[..., Awaitable[ApiServer]],
    worker_factory: Callable[..., Awaitable[Worker]],
    store: Store,
) -> AsyncIterator[httpx.AsyncClient]:
    api = await api_factory(deployment)
    await worker_factory(deployment)
    _, key = await store.users.create_key("alice")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        yield c


def of_type(events: list[Got], kind: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.event == kind]


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in body["messages"][-1]["content"] if b.get("type") == "tool_result"]


async def test_a_tool_registered_by_environment_variable_is_offered_and_called_end_to_end(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    # Given a model that calls the registered tool, then answers
    fake.script(
        Reply(text="Let me look.", tools=[("weather", {"city": "Oslo"})]),
        Reply(text="Sunny in Oslo."),
    )

    # When a run is submitted without params.tools
    run_id = await submit(client, input="What is the weather in Oslo?")
    status, events = await read_events(client, run_id)

    # Then the model was offered every registered tool, the new one with its schema
    assert status == 200
    offered = fake.requests[0].body["tools"]
    assert [t["name"] for t in offered] == [*BUILT_IN, "weather"]
    assert offered[-1] == {
        "name": "weather",
        "description": "Today's weather in a city.",
        "input_schema": WEATHER_SCHEMA,
    }
    # And the tool ran, announced by tool_start and tool_end
    [start] = of_type(events, "tool_start")
    [end] = of_type(events, "tool_end")
    assert (start["name"], start["args"]) == ("weather", {"city": "Oslo"})
    assert (end["call_id"], end["ok"]) == (start["call_id"], True)
    assert '"forecast":"sunny"' in end["preview"]
    # And the model read its result
    [result] = tool_results(fake.requests[1].body)
    assert '"forecast":"sunny"' in result["content"]
    assert events[-1].event == "done"
    assert events[-1].data["output"] == "Sunny in Oslo."


async def test_params_tools_limits_what_the_model_is_offered_and_may_call(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    # Given a model that calls `weather` although the run may only use the calculator
    fake.script(Reply(tools=[("weather", {"city": "Oslo"})]), Reply(text="I cannot."))

    run_id = await submit(client, input="weather?", params={"tools": ["calculator"]})
    _, events = await read_events(client, run_id)

    # Then only the calculator was offered, and the call is refused as an unknown tool
    assert [t["name"] for t in fake.requests[0].body["tools"]] == ["calculator"]
    [end] = of_type(events, "tool_end")
    assert (end["ok"], end["error"]) == (False, "unknown_tool")
    assert events[-1].event == "done"


async def test_an_empty_params_tools_offers_the_model_no_tool_at_all(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.script(Reply(text="Hello."))

    run_id = await submit(client, input="hi", params={"tools": []})
    _, events = await read_events(client, run_id)

    assert "tools" not in fake.requests[0].body
    assert events[-1].event == "done"


async def test_every_agent_is_handed_the_tools_its_run_may_use(
    client: httpx.AsyncClient,
) -> None:
    everything = await submit(client, input="x", agent="tool_lister")
    chosen = await submit(client, input="x", agent="tool_lister", params={"tools": ["weather"]})

    _, all_events = await read_events(client, everything)
    _, chosen_events = await read_events(client, chosen)

    assert all_events[-1].data["output"] == [*BUILT_IN, "weather"]
    assert chosen_events[-1].data["output"] == ["weather"]


@pytest.mark.parametrize(
    ("tools", "detail"),
    [
        (["weather", "rm_rf"], "unknown tools ['rm_rf']"),
        (["weather", "weather"], "names 'weather' more than once"),
        ("weather", "must be a list of tool names"),
        ([{"name": "weather"}], "must be a list of tool names"),
    ],
)
@pytest.mark.parametrize("agent", ["chat", "ticker"])
async def test_a_params_tools_that_is_not_distinct_registered_names_is_422_and_writes_nothing(
    client: httpx.AsyncClient, fake: FakeAnthropic, tools: Any, detail: str, agent: str
) -> None:
    resp = await client.post(
        "/runs", json={"input": "x", "agent": agent, "params": {"tools": tools}}
    )

    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "bad_params"
    assert detail in resp.json()["detail"]
    assert (await client.get("/runs")).json()["runs"] == []
    assert fake.requests == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"city": 5}, "5 is not of type 'string'"),
        ({"town": "Oslo"}, "'city' is a required property"),
        ({"city": "Oslo", "unit": "K"}, "'K' is not one of ['C', 'F']"),
    ],
)
async def test_arguments_that_break_the_tools_schema_reach_the_model_as_an_error_result(
    client: httpx.AsyncClient, fake: FakeAnthropic, args: dict[str, Any], reason: str
) -> None:
    fake.script(Reply(tools=[("weather", args)]), Reply(text="Let me fix that."))

    run_id = await submit(client, input="weather?")
    _, events = await read_events(client, run_id)

    # The tool never ran: the arguments were refused against its schema
    [end] = of_type(events, "tool_end")
    assert (end["ok"], end["error"]) == (False, "bad_args")
    [result] = tool_results(fake.requests[1].body)
    assert result["is_error"] is True
    assert reason in result["content"]
    assert events[-1].event == "done"
