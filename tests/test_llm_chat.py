"""The `chat` agent: offline by default, its params, plug-in tools; and the loop's own pieces
(the stream fold, checkpoint state, transcripts) on the scripted model."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

import pytest

from shared.agents.base import Checkpoint, RunContext
from shared.agents.chat import chat, chat_config, params_problem
from shared.config import Settings
from shared.errors import AgentError, ConfigError
from shared.llm.anthropic_model import TurnAccumulator
from shared.llm.breaker import BreakerPolicy, CircuitBreaker, MemoryBreakerStore
from shared.llm.budget import MemoryLedger
from shared.llm.loop import LoopConfig, LoopDeps, agent_loop
from shared.llm.model import ProviderError, TextDelta, ToolCall, TurnComplete, UsageUpdate
from shared.llm.pricing import Usage
from shared.llm.scripted import OfflineModel, ScriptedModel, ScriptedTurn
from shared.llm.services import LLM_SERVICE, build_llm_services
from shared.llm.state import LoopState, Pending, transcript, usable_history
from shared.llm.tools import Tool, ToolContext, ToolRegistry, builtin_tools
from shared.tools import load_tools


def context(text: str = "what is (2+3)*4? tell me about cancel", **kw: Any) -> RunContext:
    kw.setdefault("params", {})
    return RunContext(run_id="run-1", user_id="user-1", input=text, settings=Settings(), **kw)


async def run_chat(ctx: RunContext) -> list[dict[str, Any]]:
    return [body async for body in chat(ctx)]


# -- the agent ----------------------------------------------------------------------------------


async def test_without_an_api_key_chat_runs_the_offline_model_with_tool_events() -> None:
    ctx = context(
        tools=load_tools(),
        services={LLM_SERVICE: build_llm_services(Settings(), model=OfflineModel(0))},
    )

    events = await run_chat(ctx)

    names = [e["name"] for e in events if e["type"] == "tool_start"]
    assert names == ["calculator", "clock", "search_notes"]
    ends = [e for e in events if e["type"] == "tool_end"]
    assert all(e["ok"] for e in ends)
    assert ends[0]["preview"] == "(2+3)*4 = 20"
    assert [e["model"] for e in events if e["type"] == "usage"] == ["longrun-offline"] * 2
    assert events[-1]["type"] == "done"
    assert "(2+3)*4 = 20" in events[-1]["output"]


async def test_chat_builds_its_services_once_per_services_mapping() -> None:
    services: dict[str, Any] = {}
    first = context(services=services)
    await run_chat(first)
    built = services[LLM_SERVICE]
    await run_chat(context("hello there", services=services))
    assert services[LLM_SERVICE] is built
    assert isinstance(built.model, OfflineModel)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_steps": 0}, "params.max_steps"),
        ({"max_steps": 21}, "params.max_steps"),
        ({"max_steps": "5"}, "params.max_steps"),
        ({"max_steps": True}, "params.max_steps"),
        ({"max_tokens": 10**9}, "params.max_tokens"),
        ({"model": 5}, "params.model"),
        ({"model": "claude sonnet; drop"}, "params.model"),
        ({"model": ""}, "params.model"),
        ({"system": ["x"]}, "params.system"),
        ({"system": "x" * 20_001}, "params.system"),
        ({"tools": "calculator"}, "params.tools"),
        ({"tools": ["calculator", "rm_rf"]}, "unknown tools"),
    ],
)
async def test_bad_params_end_the_run_with_bad_params(params: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentError, match=message) as info:
        await run_chat(context(params=params))
    assert info.value.code == "bad_params"


async def test_an_empty_input_is_refused() -> None:
    with pytest.raises(AgentError) as info:
        await run_chat(context("   "))
    assert info.value.code == "bad_input"


def test_params_narrow_the_settings() -> None:
    cfg = chat_config(
        Settings(),
        {"model": "claude-haiku-4-5", "max_steps": 3, "max_tokens": 100, "system": "Be brief."},
    )
    assert (cfg.model, cfg.max_steps, cfg.max_tokens, cfg.system) == (
        "claude-haiku-4-5",
        3,
        100,
        "Be brief.",
    )


async def test_the_model_is_offered_exactly_the_runs_tools_as_params_tools_narrows_them() -> None:
    async def weather(args: dict[str, Any], tctx: ToolContext) -> str:
        return "sunny"

    # Given a run handed the built-ins and a deployment's tool, of which it asked for one
    tools = ToolRegistry(
        [*builtin_tools(), Tool("weather", "the weather", {"type": "object"}, weather)]
    )
    model = ScriptedModel([ScriptedTurn(calls=[("weather", {})]), ScriptedTurn(text="Sunny.")])
    services = {LLM_SERVICE: build_llm_services(Settings(), model=model)}
    ctx = context(tools=tools, services=services, params={"tools": ["weather"]})

    events = await run_chat(ctx)

    assert model.requests[0].tools == [tools["weather"].definition()]
    assert next(e for e in events if e["type"] == "tool_end")["preview"] == "sunny"


async def test_a_run_that_asked_for_a_tool_this_worker_lacks_ends_with_bad_params() -> None:
    # The API's registry had it, this worker's does not: no silent run without it.
    ctx = context(tools=ToolRegistry(builtin_tools()), params={"tools": ["weather"]})
    with pytest.raises(AgentError, match="unknown tools") as info:
        await run_chat(ctx)
    assert info.value.code == "bad_params"


# -- the loop's pieces --------------------------------------------------------------------------


def loop_deps(model: ScriptedModel) -> LoopDeps:
    return LoopDeps(
        model=model,
        breaker=CircuitBreaker(MemoryBreakerStore(), BreakerPolicy(60, 100, 0.5, 30)),
        ledger=MemoryLedger(),
        tools=ToolRegistry(builtin_tools()),
    )


async def test_a_provider_error_from_any_model_client_is_retried_the_same_way() -> None:
    model = ScriptedModel(
        [
            ScriptedTurn(error=ProviderError("overloaded", retryable=True, status=529)),
            ScriptedTurn(text="ok"),
        ]
    )
    cfg = LoopConfig.from_settings(Settings(), model="claude-haiku-4-5")
    events = [b async for b in agent_loop(context(), cfg, loop_deps(model))]
    assert [e["type"] for e in events] == ["notice", "token", "usage", "done"]


def test_the_stream_fold_builds_the_turn_and_tolerates_a_malformed_tool_input() -> None:
    acc = TurnAccumulator(requested_model="m")
    usage = NS(input_tokens=10, output_tokens=1, cache_creation_input_tokens=None)
    events = [
        NS(type="message_start", message=NS(model="m-2026", usage=usage)),
        NS(type="content_block_start", index=0, content_block=NS(type="text", text="")),
        NS(type="content_block_delta", index=0, delta=NS(type="text_delta", text="Hi")),
        NS(
            type="content_block_start",
            index=1,
            content_block=NS(type="tool_use", id="t1", name="calc"),
        ),
        NS(
            type="content_block_delta",
            index=1,
            delta=NS(type="input_json_delta", partial_json="{x"),
        ),
        NS(type="message_delta", delta=NS(stop_reason="tool_use"), usage=NS(output_tokens=7)),
    ]
    chunks = [c for e in events for c in acc.feed(e)]
    assert chunks == [
        UsageUpdate(Usage(input_tokens=10, output_tokens=1)),
        TextDelta("Hi"),
        UsageUpdate(Usage(input_tokens=10, output_tokens=7)),
    ]
    # A stream that stops before message_stop is a failure, not a short answer.
    with pytest.raises(ProviderError) as info:
        acc.complete()
    assert info.value.retryable

    acc.feed(NS(type="message_stop"))
    turn = acc.complete()
    assert isinstance(turn, TurnComplete)
    assert turn.model == "m-2026"
    assert turn.tool_calls == (ToolCall("t1", "calc", None, "{x"),)
    assert turn.message["content"][1] == {
        "type": "tool_use",
        "id": "t1",
        "name": "calc",
        "input": {},
    }


def test_checkpoint_state_round_trips_and_foreign_state_is_refused() -> None:
    state = LoopState.fresh("hi")
    state.step = 2
    state.pending = Pending([ToolCall("a", "clock", {})], [])
    restored = LoopState.from_checkpoint(2, state.to_checkpoint())
    assert restored.to_checkpoint() == state.to_checkpoint()
    with pytest.raises(AgentError) as info:
        LoopState.from_checkpoint(2, {"v": 99})
    assert info.value.code == "checkpoint_unreadable"


def test_the_transcript_answers_every_tool_call_that_never_ran() -> None:
    state = LoopState.fresh("hi")
    state.messages.append({"role": "assistant", "content": []})
    state.pending = Pending(
        [ToolCall("a", "clock", {}), ToolCall("b", "clock", {})],
        [{"type": "tool_result", "tool_use_id": "a", "content": "noon"}],
    )
    last = transcript(state, "cancelled")[-1]
    assert last["content"][1] == {
        "type": "tool_result",
        "tool_use_id": "b",
        "content": "not run: cancelled",
        "is_error": True,
    }


async def test_a_run_resumed_after_its_final_answer_was_checkpointed_asks_the_model_nothing() -> (
    None
):
    # Given a checkpoint that already ends with the model's answer
    state = LoopState.fresh("hi")
    state.step = 1
    state.messages.append({"role": "assistant", "content": [{"type": "text", "text": "Hello."}]})
    model = ScriptedModel([])
    ctx = context(attempt=2, checkpoint=Checkpoint(1, state.to_checkpoint()))

    # When it is resumed
    events = [
        b
        async for b in agent_loop(
            ctx, LoopConfig.from_settings(Settings(), model="m"), loop_deps(model)
        )
    ]

    # Then it ends with that answer and no model call
    assert events == [{"type": "done", "output": "Hello."}]
    assert model.requests == []


def test_no_loop_module_imports_redis_or_postgres() -> None:
    import ast
    from pathlib import Path

    package = Path(__file__).parent.parent / "shared" / "llm"
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.name == "breaker_store.py":
            continue  # the one module that owns the breakers' Redis keys
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] in {"redis", "asyncpg"}
                or n.startswith(("shared.redis", "shared.store."))
                or n in {"shared.store", "shared.llm.breaker_store"}
            ]
    assert offenders == []


def test_a_history_window_that_starts_mid_exchange_is_trimmed_to_a_user_turn() -> None:
    results = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "done"}]}
    question = {"role": "user", "content": "next?"}
    assert usable_history([results, answer, question, answer]) == [question, answer]
    assert usable_history([answer]) == []
    assert usable_history([question, answer]) == [question, answer]


def test_the_api_can_refuse_bad_chat_params_before_queueing_the_run() -> None:
    assert params_problem(Settings(), {"max_steps": 3, "tools": ["clock"]}) is None
    assert params_problem(Settings(), {"max_steps": 0}) == (
        "params.max_steps must be an integer from 1 to 20"
    )
    # params.tools is checked for every agent, against the registry (shared.tools).
    assert params_problem(Settings(), {"tools": ["nope"]}) is None


def test_malformed_configured_prices_fail_when_the_services_are_built() -> None:
    with pytest.raises(ConfigError):
        build_llm_services(Settings(model_prices_json="{"))
