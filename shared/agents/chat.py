"""`chat`: the default agent, the production agent loop (`shared.llm.loop`) over the process's
LLM services (`ctx.services["llm"]`, see `shared.llm.services`; built on first use when the
deployment did not provide them). Without `ANTHROPIC_API_KEY` it runs the offline model, so the
demo streams text and tool events with no network.

`params` (all optional): `model` (a model id), `max_steps` (1..LONGRUN_MAX_STEPS), `max_tokens`
(1..64000), `system` (a system prompt, up to 20000 characters), `tools` (the registered tools the
run may use, see `shared.tools`), `require_approval` (tool names whose every call waits for a
person's approval first: `shared.llm.approval`). Anything else there is ignored; a bad value
ends the run with `error` code `bad_params`. The model is offered exactly the run's tools,
`ctx.tools`, with their schemas. The run's new messages end up in `ctx.new_messages`, its usage
totals in `ctx.usage`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from shared.agents.base import RunContext
from shared.config import Settings
from shared.errors import AgentError
from shared.llm.loop import LoopConfig, LoopDeps, agent_loop
from shared.llm.pricing import PriceTable
from shared.llm.services import LLM_SERVICE, LLMServices, build_llm_services
from shared.llm.tools import TOOL_NAME, ToolRegistry
from shared.tools import run_tools, tools_problem

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,99}")
MAX_TOKENS = 64_000
MAX_SYSTEM_CHARS = 20_000


def _bad(message: str) -> AgentError:
    return AgentError(message, code="bad_params")


def _int_param(params: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"params.{name} must be an integer from {low} to {high}")
    return value


def chat_config(
    settings: Settings, params: dict[str, Any], prices: PriceTable | None = None
) -> LoopConfig:
    """The loop's configuration for one run: settings, narrowed by the run's params."""
    overrides: dict[str, Any] = {} if prices is None else {"prices": prices}
    model = params.get("model")
    if model is not None:
        if not isinstance(model, str) or not MODEL_ID.fullmatch(model):
            raise _bad("params.model must be a model id such as claude-sonnet-4-5")
        overrides["model"] = model
    steps = _int_param(params, "max_steps", 1, settings.max_steps)
    if steps is not None:
        overrides["max_steps"] = steps
    max_tokens = _int_param(params, "max_tokens", 1, MAX_TOKENS)
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens
    system = params.get("system")
    if system is not None:
        if not isinstance(system, str) or len(system) > MAX_SYSTEM_CHARS:
            raise _bad(f"params.system must be a string of at most {MAX_SYSTEM_CHARS} characters")
        overrides["system"] = system or None
    approval = params.get("require_approval")
    if approval is not None:
        if not isinstance(approval, list) or not all(
            isinstance(n, str) and TOOL_NAME.fullmatch(n) for n in approval
        ):
            raise _bad("params.require_approval must be a list of tool names")
        overrides["require_approval"] = frozenset(approval)
    return LoopConfig.from_settings(settings, **overrides)


def chat_tools(tools: ToolRegistry, params: dict[str, Any]) -> ToolRegistry:
    """The tools offered to the model: the run's, as narrowed by `params.tools`. A name it
    lacks means the API and this worker registered different tools: the run ends `bad_params`
    rather than go on without a tool it asked for."""
    problem = tools_problem(tools, params)
    if problem is not None:
        raise _bad(problem)
    return run_tools(tools, params)


def params_problem(settings: Settings, params: dict[str, Any]) -> str | None:
    """Why `params` would end a chat run with `bad_params`, or None: for the API to refuse them
    at submission with a 4xx instead (`params.tools` is checked for every agent, against the
    registry: `shared.tools.tools_problem`)."""
    try:
        chat_config(
            settings, params, prices=PriceTable(rows={}, fallback=PriceTable.fallback_default())
        )
    except AgentError as exc:
        return exc.detail
    return None


def services_for(ctx: RunContext) -> LLMServices:
    svc = ctx.services.get(LLM_SERVICE)
    if isinstance(svc, LLMServices):
        return svc
    # Built once per services mapping (the worker shares one across its runs).
    svc = build_llm_services(ctx.settings)
    ctx.services[LLM_SERVICE] = svc
    return svc


async def chat(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    svc = services_for(ctx)
    cfg = chat_config(ctx.settings, ctx.params, prices=svc.prices)
    tools = chat_tools(ctx.tools, ctx.params)
    if not ctx.resumed and not ctx.input.strip():
        raise AgentError("the input is empty", code="bad_input")
    deps = LoopDeps(model=svc.model, breaker=svc.breaker, ledger=svc.ledger, tools=tools)
    async for body in agent_loop(ctx, cfg, deps):
        yield body
