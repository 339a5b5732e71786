"""The agent loop against the real `anthropic` SDK, pointed at a local fake of the Messages API
(tests/fake_anthropic.py): tool calls, retries, fallback, budgets, cancellation, bad tool input,
cut streams. The only fake is the model; the breaker's shared store is real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.agents.base import Checkpoint, RunContext
from shared.config import Settings
from shared.errors import RunCancelled
from shared.llm.anthropic_model import AnthropicModel, create_client
from shared.llm.breaker import BreakerPolicy, CircuitBreaker, MemoryBreakerStore
from shared.llm.breaker_store import RedisBreakerStore
from shared.llm.budget import MemoryLedger
from shared.llm.loop import LoopConfig, LoopDeps, agent_loop
from shared.llm.pricing import PriceTable, Usage, turn_cost
from shared.llm.tools import Tool, ToolContext, ToolRegistry, builtin_tools
from shared.redis.keys import Keys
from tests.fake_anthropic import Fail, FakeAnthropic, Reply

REDIS_URL = "redis://127.0.0.1:6379/0"
SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"


def settings(**changes: Any) -> Settings:
    base = Settings(
        anthropic_api_key="test-key",
        model=SONNET,
        provider_max_retries=4,
        provider_retry_base_seconds=0.01,
        provider_retry_max_seconds=2.0,
        breaker_min_calls=100,
        tool_timeout_seconds=5.0,
    )
    return base.with_(**changes)


class Checkpoints:
    def __init__(self) -> None:
        self.saved: list[tuple[int, dict[str, Any]]] = []

    async def __call__(self, step: int, state: dict[str, Any]) -> None:
        self.saved.append((step, state))


def context(s: Settings, text: str = "what is 6*7?", **kw: Any) -> RunContext:
    return RunContext(
        run_id=str(uuid.uuid4()),
        user_id="user-1",
        input=text,
        params={},
        settings=s,
        save_checkpoint=Checkpoints(),
        **kw,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def sdk(fake: FakeAnthropic) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel(create_client(settings(anthropic_base_url=fake.url)))
    try:
        yield model
    finally:
        await model.aclose()


def deps_for(
    model: Any,
    s: Settings,
    *,
    ledger: MemoryLedger | None = None,
    tools: ToolRegistry | None = None,
    breaker: CircuitBreaker | None = None,
) -> LoopDeps:
    return LoopDeps(
        model=model,
        breaker=breaker or CircuitBreaker(MemoryBreakerStore(), BreakerPolicy.from_settings(s)),
        ledger=ledger or MemoryLedger(),
        tools=tools or ToolRegistry(builtin_tools()),
        rand=lambda: 0.5,
    )


async def collect(ctx: RunContext, deps: LoopDeps) -> list[dict[str, Any]]:
    cfg = LoopConfig.from_settings(ctx.settings)
    return [body async for body in agent_loop(ctx, cfg, deps)]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def without_tokens(events: list[dict[str, Any]]) -> list[str]:
    return [t for t in types(events) if t != "token"]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "token")


def tool_results(request_body: dict[str, Any]) -> list[dict[str, Any]]:
    last = request_body["messages"][-1]
    return [b for b in last["content"] if b.get("type") == "tool_result"]


# -- a whole run ---------------------------------------------------------------------------------


async def test_a_multi_tool_run_streams_text_runs_each_tool_and_ends_with_the_answer(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    # Given a model that calls two tools, then answers
    fake.script(
        Reply(
            text="Let me compute that.",
            tools=[("calculator", {"expression": "6*7"}), ("clock", {})],
            input_tokens=1000,
            output_tokens=50,
        ),
        Reply(text="It is 42.", input_tokens=1200, output_tokens=10),
    )
    s = settings()
    ctx = context(s)

    # When the loop runs
    events = await collect(ctx, deps_for(sdk, s))

    # Then text streams as tokens, each tool runs between start and end, usage follows each turn
    assert without_tokens(events) == [
        "usage", "tool_start", "tool_end", "tool_start", "tool_end", "usage", "done",
    ]  # fmt: skip
    assert text_of(events) == "Let me compute that.It is 42."
    starts = [e for e in events if e["type"] == "tool_start"]
    assert [(e["name"], e["args"]) for e in starts] == [
        ("calculator", {"expression": "6*7"}),
        ("clock", {}),
    ]
    ends = [e for e in events if e["type"] == "tool_end"]
    assert [e["ok"] for e in ends] == [True, True]
    assert ends[0]["preview"] == "6*7 = 42"
    assert [e["call_id"] for e in ends] == [e["call_id"] for e in starts]
    assert events[-1] == {"type": "done", "output": "It is 42."}

    # And the cost is the list price, per turn and in the run total
    usage = [e for e in events if e["type"] == "usage"]
    price = PriceTable.from_settings(s).price(SONNET)
    first = float(turn_cost(Usage(input_tokens=1000, output_tokens=50), price))
    second = float(turn_cost(Usage(input_tokens=1200, output_tokens=10), price))
    assert usage[0]["cost_usd"] == pytest.approx(first) == pytest.approx(0.00375)
    assert usage[1]["total"]["cost_usd"] == pytest.approx(first + second)
    assert usage[1]["total"]["input_tokens"] == 2200
    assert ctx.usage["cost_usd"] == pytest.approx(first + second)

    # And the model got the tools, then both results in one user turn
    assert [t["name"] for t in fake.requests[0].body["tools"]] == [
        "calculator", "clock", "search_notes",
    ]  # fmt: skip
    results = tool_results(fake.requests[1].body)
    assert next(r["content"] for r in results) == "6*7 = 42"
    assert all("is_error" not in r for r in results)

    # And the run's new messages are a valid transcript: user, assistant, results, assistant
    assert [m["role"] for m in ctx.new_messages] == ["user", "assistant", "user", "assistant"]
    assert ctx.output == "It is 42."


async def test_history_is_prepended_and_only_this_runs_messages_are_new(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(Reply(text="Again: hello."))
    s = settings()
    history = [
        {"role": "user", "content": "say hello"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    ]
    ctx = context(s, "again", history=history)

    await collect(ctx, deps_for(sdk, s))

    sent = fake.requests[0].body["messages"]
    assert sent[:2] == history
    assert sent[2] == {"role": "user", "content": "again"}
    assert [m["role"] for m in ctx.new_messages] == ["user", "assistant"]
    assert ctx.new_messages[0]["content"] == "again"


async def test_each_step_is_checkpointed_and_a_resumed_run_repeats_no_completed_tool_call(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    # Given a first attempt whose model asked for two tool calls
    calls: list[str] = []

    async def record(args: dict[str, Any], tctx: ToolContext) -> str:
        calls.append(tctx.idempotency_key)
        return f"noted {args['n']}"

    tools = ToolRegistry(
        [
            Tool(
                "note",
                "note a number",
                {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
                record,
            )
        ]
    )
    fake.script(Reply(text="Noting.", tools=[("note", {"n": 1}), ("note", {"n": 2})]))
    s = settings()
    first = context(s)
    saved: Checkpoints = first.save_checkpoint  # type: ignore[assignment]

    # When it dies right after its first tool call was checkpointed
    cancel_after_first = asyncio.Event()
    first.cancelled = cancel_after_first

    async def die_after_first_tool() -> list[dict[str, Any]]:
        out = []
        async for body in agent_loop(
            first, LoopConfig.from_settings(s), deps_for(sdk, s, tools=tools)
        ):
            out.append(body)
            if body["type"] == "tool_end":
                cancel_after_first.set()
        return out

    with pytest.raises(RunCancelled):
        await die_after_first_tool()
    assert len(calls) == 1
    step, state = saved.saved[-1]
    assert step == 1
    assert len(state["pending"]["results"]) == 1

    # Then a second attempt from that checkpoint runs only the second call, then the model
    fake.script(Reply(text="Both noted."))
    second = context(s, attempt=2, checkpoint=Checkpoint(step, state))
    second.run_id = first.run_id
    events = await collect(second, deps_for(sdk, s, tools=tools))

    assert [e["args"] for e in events if e["type"] == "tool_start"] == [{"n": 2}]
    assert calls == [f"{first.run_id}:1:toolu_fake_1_0", f"{first.run_id}:1:toolu_fake_1_1"]
    assert len(fake.requests) == 2  # the first turn was not asked for again
    assert [r["content"] for r in tool_results(fake.requests[1].body)] == ["noted 1", "noted 2"]
    assert events[-1]["output"] == "Both noted."


async def test_the_step_budget_ends_a_run_whose_model_never_stops_calling_tools(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(*[Reply(tools=[("clock", {})]) for _ in range(3)])
    s = settings(max_steps=2)
    ctx = context(s)

    events = await collect(ctx, deps_for(sdk, s))

    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "max_steps_exceeded"
    assert len(fake.requests) == 2


# -- provider failures ----------------------------------------------------------------------------


async def test_429_529_and_500_are_retried_until_the_model_answers(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(
        Fail(429, "rate_limit_error", retry_after="0"),
        Fail(529, "overloaded_error"),
        Fail(500, "api_error"),
        Reply(text="Finally."),
    )
    s = settings()
    events = await collect(context(s), deps_for(sdk, s))

    notices = [e for e in events if e["type"] == "notice"]
    assert [n["code"] for n in notices] == ["provider_retry"] * 3
    assert [n["retry"] for n in notices] == [1, 2, 3]
    assert events[-1] == {"type": "done", "output": "Finally."}
    assert len(fake.requests) == 4
    # Our retries are the only ones: the SDK made exactly one request per attempt.
    assert all(r.headers.get("x-stainless-retry-count") == "0" for r in fake.requests)


async def test_retry_after_is_honoured_before_the_next_attempt(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(Fail(429, "rate_limit_error", retry_after="0.4"), Reply(text="ok"))
    s = settings()
    started = time.monotonic()

    events = await collect(context(s), deps_for(sdk, s))

    assert time.monotonic() - started >= 0.4
    notice = next(e for e in events if e["type"] == "notice")
    assert notice["delay_seconds"] >= 0.4


async def test_retries_are_bounded_and_then_the_run_fails_with_provider_error(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(*[Fail(503, "api_error") for _ in range(3)])
    s = settings(provider_max_retries=2)

    events = await collect(context(s), deps_for(sdk, s))

    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "provider_error"
    assert len(fake.requests) == 3


async def test_a_bad_request_is_not_retried(fake: FakeAnthropic, sdk: AnthropicModel) -> None:
    fake.script(Fail(400, "invalid_request_error", "messages: bad"))
    s = settings()

    events = await collect(context(s), deps_for(sdk, s))

    assert events[-1]["code"] == "provider_error"
    assert "invalid_request_error" in events[-1]["message"]
    assert len(fake.requests) == 1


async def test_a_stream_cut_midway_is_retried_and_announced(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    # Given a first answer whose connection drops after a few words, and one that ends early
    fake.script(
        Reply(text="one two three four five", cut_after=4),
        Reply(text="one two three four five", end_after=5),
        Reply(text="complete answer"),
    )
    s = settings()

    events = await collect(context(s), deps_for(sdk, s))

    # Then both broken streams are retried, and the partial text is followed by a notice
    assert [e["code"] for e in events if e["type"] == "notice"] == ["provider_retry"] * 2
    assert events[-1] == {"type": "done", "output": "complete answer"}
    # And the tokens of the cut turns were charged (partial usage), then the full turn
    usage = [e for e in events if e["type"] == "usage"]
    assert [u.get("partial", False) for u in usage] == [True, True, False]
    assert usage[-1]["total"]["input_tokens"] == 300


async def test_an_overloaded_error_inside_the_stream_is_retried(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(Reply(text="a b c", error_after=3), Reply(text="fine"))
    s = settings()

    events = await collect(context(s), deps_for(sdk, s))

    assert [e["code"] for e in events if e["type"] == "notice"] == ["provider_retry"]
    assert events[-1]["output"] == "fine"


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisBreakerStore]:
    prefix = f"lrtest-llm-{uuid.uuid4().hex[:8]}"
    r = aioredis.Redis.from_url(REDIS_URL)
    keys = Keys(prefix=prefix, queue=f"{prefix}:runs", group="workers")
    try:
        yield RedisBreakerStore(r, keys)
    finally:
        async for key in r.scan_iter(match=keys.all_pattern()):
            await r.delete(key)
        await r.aclose()


async def test_an_open_breaker_switches_every_worker_to_the_fallback_model(
    fake: FakeAnthropic, sdk: AnthropicModel, redis_store: RedisBreakerStore
) -> None:
    # Given a primary model that is overloaded, a fallback that works, a breaker in Redis
    s = settings(
        fallback_model=HAIKU,
        breaker_min_calls=2,
        breaker_error_rate=0.5,
        breaker_open_seconds=60,
        provider_max_retries=5,
    )
    fake.script(*[Fail(529, "overloaded_error") for _ in range(5)], model=SONNET)
    fake.script(Reply(text="from the fallback"), Reply(text="again the fallback"), model=HAIKU)
    policy = BreakerPolicy.from_settings(s)

    # When a run on worker A fails twice on the primary
    worker_a = CircuitBreaker(redis_store, policy)
    events = await collect(context(s), deps_for(sdk, s, breaker=worker_a))

    # Then the breaker opened, the run moved to the fallback and said so
    assert len(fake.requests_for(SONNET)) == 2
    fallback = [e for e in events if e.get("code") == "model_fallback"]
    assert len(fallback) == 1
    assert fallback[0]["model"] == HAIKU
    assert events[-1] == {"type": "done", "output": "from the fallback"}
    usage = [e for e in events if e["type"] == "usage"]
    assert usage[-1]["model"] == HAIKU
    assert usage[-1]["cost_usd"] == pytest.approx(100 * 1 / 1e6 + 20 * 5 / 1e6)

    # And a run on worker B (another breaker object, same Redis) skips the primary at once
    worker_b = CircuitBreaker(redis_store, policy)
    events = await collect(context(s), deps_for(sdk, s, breaker=worker_b))
    assert len(fake.requests_for(SONNET)) == 2
    assert types(events)[0] == "notice"
    assert events[0]["code"] == "model_fallback"
    assert events[-1]["output"] == "again the fallback"


async def test_an_open_breaker_without_a_fallback_fails_fast(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    s = settings(breaker_min_calls=1, breaker_open_seconds=60, provider_max_retries=3)
    fake.script(Fail(500, "api_error"))

    events = await collect(context(s), deps_for(sdk, s))

    assert events[-1]["code"] == "provider_unavailable"
    assert len(fake.requests) == 1


# -- budgets ------------------------------------------------------------------------------------


async def test_the_run_cost_ceiling_ends_the_run_after_the_model_call_that_reaches_it(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    # Given turns of $0.15 each (50K input tokens of Sonnet) and a $0.25 ceiling
    big = {"input_tokens": 50_000, "output_tokens": 0}
    fake.script(
        Reply(text="step one", tools=[("clock", {})], **big),
        Reply(text="step two", tools=[("clock", {})], **big),
        Reply(text="never asked", **big),
    )
    s = settings(max_run_cost_usd=0.25)
    ctx = context(s)

    events = await collect(ctx, deps_for(sdk, s))

    # Then the second turn's cost ends the run before its tool runs
    assert without_tokens(events) == ["usage", "tool_start", "tool_end", "usage", "error"]
    assert events[-1]["code"] == "cost_budget_exceeded"
    assert len(fake.requests) == 2
    assert ctx.usage["cost_usd"] == pytest.approx(0.30)
    # And the unanswered tool call is closed in the transcript
    last = ctx.new_messages[-1]
    assert last["role"] == "user"
    assert last["content"][0]["is_error"] is True


async def test_the_daily_ceiling_counts_spend_from_earlier_runs(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    ledger = MemoryLedger()
    await ledger.add_spend("user-1", 19.9999)
    fake.script(Reply(text="expensive", input_tokens=100_000))
    s = settings()

    events = await collect(context(s), deps_for(sdk, s, ledger=ledger))

    assert events[-1]["code"] == "daily_budget_exceeded"
    assert await ledger.spent_today("user-1") == pytest.approx(19.9999 + 0.3 + 0.0003)


async def test_a_user_over_the_daily_ceiling_gets_no_model_call_at_all(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    ledger = MemoryLedger()
    await ledger.add_spend("user-1", 20.0)
    s = settings()

    events = await collect(context(s), deps_for(sdk, s, ledger=ledger))

    assert events == [
        {
            "type": "error",
            "code": "daily_budget_exceeded",
            "message": "the daily cost ceiling of $20 was reached",
        }
    ]
    assert fake.requests == []


# -- cancellation -------------------------------------------------------------------------------


async def test_a_cancel_mid_stream_stops_the_loop_within_a_second_and_keeps_usage(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    # Given a model that streams two words and then stalls
    fake.script(Reply(text="one two three four", hang_after=5, input_tokens=4000))
    s = settings()
    ctx = context(s)
    seen: list[dict[str, Any]] = []

    two_words = asyncio.Event()

    # When the run is cancelled while the stream is stalled
    async def consume() -> None:
        async for body in agent_loop(ctx, LoopConfig.from_settings(s), deps_for(sdk, s)):
            seen.append(body)
            if len(seen) == 2:
                two_words.set()

    task = asyncio.create_task(consume())
    await fake.hanging.wait()
    await two_words.wait()
    started = time.monotonic()
    ctx.cancelled.set()

    # Then the loop raises RunCancelled promptly, having emitted nothing more
    with pytest.raises(RunCancelled):
        await asyncio.wait_for(task, timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert types(seen) == ["token", "token"]
    # And the input tokens already billed are in the usage the worker reads
    assert ctx.usage["input_tokens"] == 4000
    assert ctx.usage["cost_usd"] == pytest.approx(4000 * 3 / 1e6 + 1 * 15 / 1e6)
    assert ctx.new_messages == [{"role": "user", "content": "what is 6*7?"}]


async def test_a_run_torn_down_from_outside_mid_stream_still_reports_its_usage(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    # Given a stalled stream, consumed the way the worker does (a task it may cancel)
    fake.script(Reply(text="one two three", hang_after=4, input_tokens=2000))
    s = settings()
    ctx = context(s)
    first_token = asyncio.Event()

    async def drive() -> None:
        async for body in agent_loop(ctx, LoopConfig.from_settings(s), deps_for(sdk, s)):
            if body["type"] == "token":
                first_token.set()

    task = asyncio.create_task(drive())
    await first_token.wait()

    # When the worker cancels the task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Then the tokens already billed are in ctx.usage all the same
    assert ctx.usage["input_tokens"] == 2000
    assert ctx.usage["cost_usd"] > 0


async def test_a_cancel_during_a_running_tool_stops_the_loop(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    started = asyncio.Event()

    async def slow(args: dict[str, Any], tctx: ToolContext) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    tools = ToolRegistry([Tool("slow", "takes forever", {"type": "object"}, slow)])
    fake.script(Reply(tools=[("slow", {})]))
    s = settings(tool_timeout_seconds=3600)
    ctx = context(s)
    task = asyncio.create_task(collect(ctx, deps_for(sdk, s, tools=tools)))
    await started.wait()

    ctx.cancelled.set()

    with pytest.raises(RunCancelled):
        await asyncio.wait_for(task, timeout=1.0)
    # The transcript closes the interrupted call so the thread stays valid.
    assert ctx.new_messages[-1]["content"][0]["is_error"] is True


# -- bad tool input -----------------------------------------------------------------------------


async def test_an_unknown_tool_becomes_an_error_result_and_the_loop_goes_on(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    fake.script(Reply(tools=[("teleport", {"to": "mars"})]), Reply(text="Sorry, I cannot."))
    s = settings()

    events = await collect(context(s), deps_for(sdk, s))

    end = next(e for e in events if e["type"] == "tool_end")
    assert end["ok"] is False
    assert end["error"] == "unknown_tool"
    result = tool_results(fake.requests[1].body)[0]
    assert result["is_error"] is True
    assert "teleport" in result["content"]
    assert events[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ('{"expression": 6*}', "not a JSON object"),
        ('["6*7"]', "not a JSON object"),
        ({"expr": "6*7"}, "'expression' is a required property"),
        ({"expression": 42}, "42 is not of type 'string'"),
    ],
)
async def test_malformed_tool_arguments_become_an_error_result(
    fake: FakeAnthropic, sdk: AnthropicModel, args: dict[str, Any] | str, reason: str
) -> None:
    fake.script(Reply(tools=[("calculator", args)]), Reply(text="Let me fix that."))
    s = settings()

    events = await collect(context(s), deps_for(sdk, s))

    end = next(e for e in events if e["type"] == "tool_end")
    assert end["ok"] is False
    assert end["error"] == "bad_args"
    assert reason in tool_results(fake.requests[1].body)[0]["content"]
    assert events[-1]["type"] == "done"
    # The assistant turn is replayed with an object input, as the API requires.
    replayed = fake.requests[1].body["messages"][1]["content"][0]
    assert replayed["type"] == "tool_use"
    assert isinstance(replayed["input"], dict)


async def test_a_hanging_tool_times_out_into_an_error_result(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    async def hang(args: dict[str, Any], tctx: ToolContext) -> str:
        await asyncio.Event().wait()
        return "never"

    tools = ToolRegistry([Tool("hang", "never returns", {"type": "object"}, hang)])
    fake.script(Reply(tools=[("hang", {})]), Reply(text="It timed out."))
    s = settings(tool_timeout_seconds=0.2)

    events = await collect(context(s), deps_for(sdk, s, tools=tools))

    end = next(e for e in events if e["type"] == "tool_end")
    assert end["ok"] is False
    assert end["error"] == "timeout"
    assert events[-1] == {"type": "done", "output": "It timed out."}


async def test_a_tool_that_raises_becomes_an_error_result(
    fake: FakeAnthropic, sdk: AnthropicModel
) -> None:
    async def boom(args: dict[str, Any], tctx: ToolContext) -> str:
        raise RuntimeError("secret internals")

    tools = ToolRegistry([Tool("boom", "fails", {"type": "object"}, boom)])
    fake.script(Reply(tools=[("boom", {})]), Reply(text="It failed."))
    s = settings()

    events = await collect(context(s), deps_for(sdk, s, tools=tools))

    end = next(e for e in events if e["type"] == "tool_end")
    assert end == {
        "type": "tool_end",
        "call_id": "toolu_fake_1_0",
        "name": "boom",
        "ok": False,
        "preview": "the tool raised RuntimeError",
        "error": "tool_crashed",
    }
