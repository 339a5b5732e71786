"""The agent loop: model turns and tool calls until the model ends its turn, as a stream of
event bodies (see `shared.agents.base`).

Each step streams one model turn (`token` events as text arrives, a `usage` event once it ends:
this turn's tokens and `cost_usd` at the top level, which the worker sums, and the run's `total`)
then runs the turn's tool calls one by one (`tool_start`, `tool_end` with `ok` and a `preview`);
a call whose tool needs a person's approval first waits for it (`shared.llm.approval`).
The run ends with `done` (`output`: the final turn's text) when a turn calls no tool, or with
`error`: `max_steps_exceeded`, `cost_budget_exceeded`, `daily_budget_exceeded`,
`provider_error` (a failure not worth retrying, or retries spent) or `provider_unavailable`
(breaker open and no fallback). Budgets are checked before the first call and after every
model call, each turn being charged to the ledger as soon as it ends (a turn cut short by a
failure is charged what it had used).

Provider failures are retried per `retry.retry_delay`, each retry announced by a `notice`;
before every attempt the model's breaker is asked, and while the primary's is open the loop
uses `fallback_model` (a `notice` says so) or fails fast.

Checkpoints: after each model turn (state: its tool calls pending), after each tool call, and
after each step; a resumed run restores the state and never repeats a model turn or tool call
the checkpoint records. Cancellation (`ctx.cancelled`) interrupts a stream, a backoff or a tool
at once and raises `RunCancelled` without another event; `ctx.usage` (run totals, including the
interrupted turn's tokens so far) and `ctx.new_messages` (this run's messages, every tool call
answered, for the worker to append to the thread) are kept current throughout.

This module does no I/O of its own: the model, breaker, ledger and tools are injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from shared.agents.base import RunContext
from shared.config import Settings
from shared.errors import RunCancelled
from shared.llm.approval import Verdict, approval_payload, rejection_text, verdict_of
from shared.llm.breaker import Breaker
from shared.llm.budget import SpendLedger, budget_verdict
from shared.llm.cancel import race, until_cancelled
from shared.llm.model import (
    ModelClient,
    ProviderError,
    TextDelta,
    ToolCall,
    TurnComplete,
    TurnRequest,
    UsageUpdate,
)
from shared.llm.pricing import PriceTable, Usage, turn_cost
from shared.llm.retry import RetryPolicy, retry_delay
from shared.llm.state import (
    LoopState,
    Pending,
    Totals,
    tool_result,
    transcript,
    usable_history,
)
from shared.llm.tools import ToolContext, ToolOutcome, ToolRegistry, run_tool

log = structlog.get_logger("longrun.agent")
# A run torn down mid-turn charges the daily ledger within this bound, or logs that it could not.
TEARDOWN_CHARGE_SECONDS = 2.0

Body = dict[str, Any]


# A model turn's output budget unless the run asks for another (`params.max_tokens`).
DEFAULT_MAX_TOKENS = 4096


@dataclass(frozen=True)
class LoopConfig:
    """One run's loop settings: `from_settings` (the knobs, each declared once in
    `shared.config`), narrowed per run by `shared.agents.chat.chat_config`."""

    model: str
    fallback_model: str | None
    max_steps: int
    max_tokens: int
    system: str | None
    max_run_cost_usd: float
    max_user_day_cost_usd: float
    tool_timeout_seconds: float
    retry: RetryPolicy
    prices: PriceTable
    # Tools whose calls a person approves first (`params.require_approval`).
    require_approval: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LoopConfig:
        values: dict[str, Any] = {
            "max_tokens": DEFAULT_MAX_TOKENS,
            "system": None,
            "model": settings.model,
            "fallback_model": settings.fallback_model,
            "max_steps": settings.max_steps,
            "max_run_cost_usd": settings.max_run_cost_usd,
            "max_user_day_cost_usd": settings.max_user_day_cost_usd,
            "tool_timeout_seconds": settings.tool_timeout_seconds,
            "retry": RetryPolicy.from_settings(settings),
            "prices": PriceTable.from_settings(settings),
            "require_approval": frozenset(),
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class LoopDeps:
    model: ModelClient
    breaker: Breaker
    ledger: SpendLedger
    tools: ToolRegistry
    rand: Callable[[], float] = random.random
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def finished_text(state: LoopState) -> str | None:
    """The final answer when the state already ends with one (an assistant turn, no tool call
    pending), else None."""
    if state.pending is not None or not state.messages:
        return None
    last = state.messages[-1]
    if last.get("role") != "assistant":
        return None
    blocks = last.get("content") or []
    if any(b.get("type") == "tool_use" for b in blocks):
        return None
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def error_body(code: str, message: str) -> Body:
    return {"type": "error", "code": code, "message": message}


class _Stop(Exception):
    """Ends the run with `body` (an error event)."""

    def __init__(self, body: Body) -> None:
        super().__init__(body.get("code"))
        self.body = body


class AgentLoop:
    def __init__(self, ctx: RunContext, cfg: LoopConfig, deps: LoopDeps) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.deps = deps
        self.prices = cfg.prices
        self.state = self._initial_state()
        self.history = usable_history(ctx.history)
        self.current_model: str | None = None
        # The turn being streamed: its tokens so far are charged if it is cut short.
        self.inflight: tuple[str, Usage] | None = None

    def _initial_state(self) -> LoopState:
        cp = self.ctx.checkpoint
        if self.ctx.resumed and cp is not None:
            return LoopState.from_checkpoint(cp.step, cp.state)
        return LoopState.fresh(self.ctx.input)

    # -- the run -----------------------------------------------------------------------------
    async def events(self) -> AsyncGenerator[Body, None]:
        self._publish()
        try:
            # Inner generators are closed explicitly (aclosing) so that a run torn down from
            # outside stops its model stream now, not whenever the generators are collected.
            async with contextlib.aclosing(self._run()) as run:
                async for body in run:
                    yield body
        except _Stop as stop:
            self._publish()
            yield stop.body
        except RunCancelled:
            try:
                await self._charge_inflight()
            except Exception as exc:  # best effort on the way out: the cancel must go through
                log.warning("cancelled_turn_not_charged", error=repr(exc)[:200])
                self._charge_inflight_locally()
            self._publish("the run was cancelled")
            raise
        except asyncio.CancelledError:
            # Torn down from outside (the worker cancels the agent's task on a cancel, a drain
            # or a lost lease): the provider billed the interrupted turn all the same, so it
            # reaches the run's totals at once and the daily ledger within a short bound.
            cost = self._charge_inflight_locally()
            self._publish("the run stopped")
            await self._ledger_on_teardown(cost)
            raise
        except BaseException:
            self._charge_inflight_locally()
            self._publish("the run stopped")
            raise

    async def _run(self) -> AsyncGenerator[Body, None]:
        answered = finished_text(self.state)
        if answered is not None:
            # An earlier attempt got the final answer but died before its terminal event.
            self.ctx.output = answered
            yield {"type": "done", "output": answered}
            return
        await self._check_budget()
        while True:
            if self.ctx.cancelled.is_set():
                raise RunCancelled("the run was cancelled")
            if self.state.pending is None:
                if self.state.step >= self.cfg.max_steps:
                    self._end_pending("the step budget was spent")
                    raise _Stop(
                        error_body(
                            "max_steps_exceeded",
                            f"the model did not finish within {self.cfg.max_steps} steps",
                        )
                    )
                self.state.step += 1
                turn: list[TurnComplete] = []
                async with contextlib.aclosing(self._model_turn(turn)) as steps:
                    async for body in steps:
                        yield body
                if not turn[0].tool_calls:
                    async for body in self._finish(turn[0]):
                        yield body
                    return
            async with contextlib.aclosing(self._tools()) as calls:
                async for body in calls:
                    yield body

    async def _finish(self, turn: TurnComplete) -> AsyncIterator[Body]:
        self.ctx.output = turn.text
        await self._save()
        self._publish()
        yield {"type": "done", "output": turn.text}

    # -- one model turn ----------------------------------------------------------------------
    async def _model_turn(self, out: list[TurnComplete]) -> AsyncGenerator[Body, None]:
        """Stream one turn, retrying and falling back; appends the completed turn to `out`."""
        retries = 0
        while True:
            model = await self._pick_model()
            previous = self.current_model or self.cfg.model
            if model != previous or (self.current_model is None and model != self.cfg.model):
                yield self._switch_notice(previous, model)
            self.current_model = model
            try:
                complete = None
                async with contextlib.aclosing(self._stream(model)) as chunks:
                    async for body in chunks:
                        if isinstance(body, TurnComplete):
                            complete = body
                        else:
                            yield body
            except ProviderError as err:
                if err.breaker:
                    await self.deps.breaker.record(model, ok=False)
                usage_body, verdict = await self._charge_inflight()
                if usage_body is not None:
                    yield usage_body
                if verdict is not None:
                    self._stop_for_budget(verdict)
                delay = (
                    retry_delay(self.cfg.retry, retries, err.retry_after, self.deps.rand())
                    if err.retryable
                    else None
                )
                log.warning("provider_failed", model=model, error=err.detail, retry_in=delay)
                if delay is None:
                    self._end_pending("the model call failed")
                    raise _Stop(error_body("provider_error", err.detail)) from None
                retries += 1
                yield {
                    "type": "notice",
                    "code": "provider_retry",
                    "message": f"the model call failed ({err.detail[:120]}); "
                    f"retry {retries} in {delay:.2f} s",
                    "retry": retries,
                    "delay_seconds": round(delay, 3),
                }
                await race(asyncio.sleep(delay), self.ctx.cancelled)
                continue
            assert complete is not None
            await self.deps.breaker.record(model, ok=True)
            usage_body, verdict = await self._complete_turn(complete)
            yield usage_body
            if verdict is not None:
                self._stop_for_budget(verdict)
            out.append(complete)
            return

    async def _stream(self, model: str) -> AsyncGenerator[Body | TurnComplete, None]:
        request = TurnRequest(
            model=model,
            messages=[*self.history, *self.state.messages],
            tools=self.deps.tools.definitions(),
            system=self.cfg.system,
            max_tokens=self.cfg.max_tokens,
        )
        self.inflight = (model, Usage())
        source = self.deps.model.stream_turn(request)
        async with contextlib.aclosing(until_cancelled(source, self.ctx.cancelled)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TextDelta):
                    if chunk.text:
                        yield {"type": "token", "text": chunk.text}
                elif isinstance(chunk, UsageUpdate):
                    self.inflight = (model, chunk.usage)
                else:
                    yield chunk
                    return
        raise ProviderError("the model stream ended without a final message", retryable=True)

    async def _pick_model(self) -> str:
        if await self.deps.breaker.allow(self.cfg.model):
            return self.cfg.model
        fallback = self.cfg.fallback_model
        if fallback and fallback != self.cfg.model and await self.deps.breaker.allow(fallback):
            return fallback
        self._end_pending("the model is unavailable")
        raise _Stop(
            error_body(
                "provider_unavailable",
                f"the circuit breaker for {self.cfg.model} is open"
                + ("" if not fallback else f" and so is the fallback {fallback}'s"),
            )
        )

    def _switch_notice(self, old: str, new: str) -> Body:
        if new == self.cfg.model:
            message = f"{new} is available again; switching back from {old}"
        else:
            message = f"{old} is unavailable (circuit breaker open); using fallback model {new}"
        return {"type": "notice", "code": "model_fallback", "model": new, "message": message}

    async def _complete_turn(self, turn: TurnComplete) -> tuple[Body, str | None]:
        """Charge the turn, record it, checkpoint. Returns its usage event and the budget
        verdict."""
        self.inflight = None
        body, verdict = await self._charge(turn.model, turn.usage)
        self.state.messages.append(turn.message)
        if turn.tool_calls:
            self.state.pending = Pending(list(turn.tool_calls))
        await self._save()
        self._publish()
        return body, verdict

    # -- tools -------------------------------------------------------------------------------
    async def _tools(self) -> AsyncGenerator[Body, None]:
        pending = self.state.pending
        assert pending is not None
        for call in pending.calls:
            if call.call_id in pending.done_ids():
                continue
            # Asked before the call is announced: a resumed run announces it once.
            verdict = await self._approval(call)
            args = call.args if verdict.args is None else verdict.args
            yield {
                "type": "tool_start",
                "call_id": call.call_id,
                "name": call.name,
                "args": args if args is not None else call.raw_args,
                "step": self.state.step,
            }
            if verdict.approved:
                outcome = await run_tool(
                    self.deps.tools,
                    call.name,
                    args,
                    self._tool_context(call),
                    default_timeout=self.cfg.tool_timeout_seconds,
                    cancelled=self.ctx.cancelled,
                )
            else:
                outcome = ToolOutcome(False, rejection_text(verdict), "rejected")
            pending.results.append(tool_result(call.call_id, outcome.content, outcome.ok))
            # Saved before it is announced: a completed call is never run twice.
            await self._save()
            end: Body = {
                "type": "tool_end",
                "call_id": call.call_id,
                "name": call.name,
                "ok": outcome.ok,
                "preview": outcome.preview,
            }
            if outcome.error is not None:
                end["error"] = outcome.error
            yield end
        self.state.messages.append({"role": "user", "content": list(pending.results)})
        self.state.pending = None
        await self._save()
        self._publish()

    async def _approval(self, call: ToolCall) -> Verdict:
        """A person's verdict on the call when its tool needs one (`shared.llm.approval`):
        the run waits for it (`ctx.interrupt`)."""
        tool = self.deps.tools.get(call.name)
        needed = call.name in self.cfg.require_approval or (
            tool is not None and tool.requires_approval
        )
        if not needed:
            return Verdict(True)
        args = call.args if call.args is not None else call.raw_args
        payload = approval_payload(call.name, args, call.call_id, self.state.step)
        return verdict_of(await self.ctx.interrupt(payload))

    def _tool_context(self, call: ToolCall) -> ToolContext:
        return ToolContext(
            run_id=self.ctx.run_id,
            user_id=self.ctx.user_id,
            step=self.state.step,
            call_id=call.call_id,
            idempotency_key=self.ctx.idempotency_key(self.state.step, call.call_id),
            now=self.deps.now,
        )

    # -- money -------------------------------------------------------------------------------
    async def _check_budget(self) -> None:
        spent = await self.deps.ledger.spent_today(self.ctx.user_id)
        verdict = budget_verdict(
            self.state.totals.cost_usd,
            spent,
            self.cfg.max_run_cost_usd,
            self.cfg.max_user_day_cost_usd,
        )
        if verdict is not None:
            self._stop_for_budget(verdict)

    async def _charge(
        self, model: str, usage: Usage, partial: bool = False
    ) -> tuple[Body, str | None]:
        cost = turn_cost(usage, self.prices.price(model))
        self.state.totals = self.state.totals.add(usage, cost)
        await self.deps.ledger.add_spend(self.ctx.user_id, float(cost))
        spent = await self.deps.ledger.spent_today(self.ctx.user_id)
        verdict = budget_verdict(
            self.state.totals.cost_usd,
            spent,
            self.cfg.max_run_cost_usd,
            self.cfg.max_user_day_cost_usd,
        )
        body: Body = {
            "type": "usage",
            "model": model,
            "step": self.state.step,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "cost_usd": float(cost),
            "total": self.state.totals.as_dict(),
        }
        if partial:
            body["partial"] = True
        return body, verdict

    async def _charge_inflight(self) -> tuple[Body | None, str | None]:
        """Charge a turn that ended early (failure, cancel) for what it had used."""
        if self.inflight is None:
            return None, None
        model, usage = self.inflight
        self.inflight = None
        if usage == Usage():
            return None, None
        return await self._charge(model, usage, partial=True)

    def _charge_inflight_locally(self) -> Decimal:
        """The interrupted turn into the run's totals, without I/O (a generator being closed
        cannot await); returns its cost, for the ledger when an await is possible."""
        if self.inflight is None:
            return Decimal(0)
        model, usage = self.inflight
        self.inflight = None
        cost = turn_cost(usage, self.prices.price(model))
        self.state.totals = self.state.totals.add(usage, cost)
        return cost

    async def _ledger_on_teardown(self, cost: Decimal) -> None:
        if not cost:
            return
        try:
            await asyncio.wait_for(
                self.deps.ledger.add_spend(self.ctx.user_id, float(cost)), TEARDOWN_CHARGE_SECONDS
            )
        except Exception as exc:  # best effort on the way out: the teardown must go through
            log.warning("cancelled_turn_not_charged", error=repr(exc)[:200])

    def _stop_for_budget(self, code: str) -> None:
        self._end_pending("the cost budget was spent")
        limit = (
            f"the run's cost ceiling of ${self.cfg.max_run_cost_usd:g}"
            if code == "cost_budget_exceeded"
            else f"the daily cost ceiling of ${self.cfg.max_user_day_cost_usd:g}"
        )
        raise _Stop(error_body(code, f"{limit} was reached"))

    # -- state -------------------------------------------------------------------------------
    def _end_pending(self, reason: str) -> None:
        """Close unanswered tool calls so the messages stay valid history."""
        if self.state.pending is not None:
            self.state.messages = transcript(self.state, reason)
            self.state.pending = None

    async def _save(self) -> None:
        await self.ctx.save_checkpoint(self.state.step, self.state.to_checkpoint())

    def _publish(self, reason: str = "the run ended") -> None:
        totals: Totals = self.state.totals
        self.ctx.usage = {**totals.as_dict(), "steps": self.state.step}
        self.ctx.new_messages = transcript(self.state, reason)


async def agent_loop(ctx: RunContext, cfg: LoopConfig, deps: LoopDeps) -> AsyncIterator[Body]:
    """The loop as an agent-shaped async generator."""
    loop = AgentLoop(ctx, cfg, deps)
    async with contextlib.aclosing(loop.events()) as events:
        async for body in events:
            yield body


__all__ = ["AgentLoop", "LoopConfig", "LoopDeps", "agent_loop"]
