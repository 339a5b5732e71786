"""One attempt at one run, start to end: claim it in Postgres, fence it in Redis, run the agent
(its events through `worker.attempt.log`), and end it (`worker.attempt.end`).

The attempt ends in exactly one of these ways:
- the agent finishes (done / error / crash / event cap / timeout): terminal state committed;
- a cancel is requested: `cancelled` committed, usage so far kept;
- the lease is lost (another attempt owns the run): nothing more is written, nothing acked;
- a hand-over (drain, or Redis lost the entry): the run re-queued, its entry handed over;
- the agent interrupted (`ctx.interrupt`): the run waits for a person, released
  (`worker.attempt.wait`);
- Postgres or Redis stays away longer than an outage is ridden out: nothing acked, the lease
  moves the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import structlog

from shared.agents import Agent
from shared.agents.base import RunContext
from shared.errors import AgentError, LeaseLost
from shared.history import load_history
from shared.logs import info_line
from shared.models import TERMINAL_EVENT_TYPES, Run
from shared.redis.client import REDIS_DOWN
from shared.redis.runs import EventCapExceeded, Fence
from shared.tools import run_tools
from worker.attempt.end import end, finish_error
from worker.attempt.log import flush, queue, stop_flusher
from worker.attempt.state import AttemptState, Deps, outage_deadline
from worker.attempt.wait import handler, wait
from worker.batches import Claimed
from worker.policies import (
    RETRYABLE,
    remaining_seconds,
    retry_unavailable,
    run_timeout,
    usage_totals,
)
from worker.signals import Ending

log = structlog.get_logger("longrun.worker")

# Events the worker itself adds; an agent resuming looks past them for its own last event.
LIFECYCLE_TYPES = frozenset({"start", "resumed", "notice"})
# Event codes that mean a model provider call failed (retried, or ending the run).
PROVIDER_ERROR_CODES = frozenset({"provider_retry", "provider_error"})
# A re-claimed attempt copies at most this many of the run's last events from the archive to
# a Redis that lost them (older ones are read from the archive by the clients that need them).
BACKFILL_MAX = 1000


async def execute(st: AttemptState, d: Deps) -> None:
    try:
        await _execute(st, d)
    except RETRYABLE as exc:
        # Postgres or Redis stayed away longer than an outage is ridden out: leave the run
        # to the lease (nothing acked), for a worker that can reach them.
        log.warning("attempt_abandoned", run_id=st.run_id, error=type(exc).__name__)


async def _execute(st: AttemptState, d: Deps) -> None:
    claimed = Claimed(None, None)
    if st.run_id:
        claimed = await retry_unavailable(
            "claim",
            lambda: d.writes.claim(st.run_id, reclaim=st.reclaimed, entry_id=st.entry.entry_id),
            stop=st.signals.lost,
            deadline=outage_deadline(d.settings),
        )
    run = claimed.run
    if run is None:
        # Unknown, finished, cancelled, or a duplicate entry of a run another worker holds.
        await d.rio.ack(d.consumer, st.entry.entry_id)
        log.info("entry_skipped", run_id=st.run_id, entry=st.entry.entry_id)
        return
    st.run = run
    st.seq = run.last_seq
    st.event_bytes = run.event_bytes
    structlog.contextvars.bind_contextvars(run_id=run.run_id, attempt=run.attempt)
    try:
        fence = await _fence(st, d, claimed.fence)
    except LeaseLost:
        log.warning("lease_lost", stage="fence")
        return
    info_line("longrun.worker", "run_claimed", agent=run.agent, reclaimed=st.reclaimed)
    if st.poison:
        # Dead-lettered only now that it holds the run: a run that ended meanwhile (its
        # entry re-delivered by Redis faults, not by crashes) was skipped above.
        await d.rio.group.dead_letter(st.entry, st.deliveries, "max_attempts")
        log.warning("run_dead_lettered", deliveries=st.deliveries)
        await finish_error(st, d, "max_attempts", "the run was delivered too many times")
        return
    if fence.cancel_requested or run.cancel_requested:
        st.signals.cancel.set()
    await _drive_and_end(st, d, run)


async def _fence(st: AttemptState, d: Deps, got: Fence | LeaseLost | None) -> Fence:
    """The run's fence in Redis (raised with the claim, or here), and what Redis lacks of the
    run's log copied from the archive (a re-claimed run after Redis lost events)."""
    run = st.run
    assert run is not None
    if isinstance(got, LeaseLost):
        raise got
    fence = got or await retry_unavailable(
        "fence",
        lambda: d.rio.fence(run.run_id, run.attempt, d.consumer, st.entry.entry_id),
        stop=st.signals.lost,
        deadline=outage_deadline(d.settings),
    )
    if fence.deferred:
        st.first_write = (d.consumer, st.entry.entry_id)
    elif fence.seq < run.last_seq:
        after = max(fence.seq, run.last_seq - BACKFILL_MAX)
        st.unsent = await d.store.runs.events_after(run.run_id, after, BACKFILL_MAX)
    return fence


async def _drive_and_end(st: AttemptState, d: Deps, run: Run) -> None:
    agent = d.agents.get(run.agent)
    if agent is None:
        await finish_error(st, d, "unknown_agent", f"no agent named {run.agent!r}")
        return
    first: dict[str, Any] = (
        {"type": "resumed", "attempt": run.attempt}
        if run.attempt > 1
        # The run id rides in the start event for a client that learnt of the run from its stream
        # alone (`POST /runs/stream`): encoded once, so the archive and Redis carry it alike.
        else {"type": "start", "agent": run.agent, "run_id": run.run_id}
    )
    try:
        await queue(st, d, first)
        ctx = st.ctx = await _context(st, d, run)
    except LeaseLost:
        log.warning("lease_lost", stage="start")
        return
    limit = run_timeout(d.settings, run.params)
    left = remaining_seconds(limit, run.started_at, datetime.now(UTC))
    ending, terminal = await _supervise(st, d, agent, ctx, left)
    if ending is Ending.WAITING:
        await wait(st, d)
        return
    await end(st, d, ending, terminal, ctx)


async def _context(st: AttemptState, d: Deps, run: Run) -> RunContext:
    last_event = None
    checkpoint = None
    history: list[dict[str, Any]] = []
    answers: dict[str, Any] = {}
    if run.thread_id is not None:
        history = await load_history(d.store, d.rio.threads, run.user_id, run.thread_id)
    if run.attempt > 1:
        # From Postgres: the log as committed is the only one any client may have seen.
        archived = await d.store.runs.last_archived_event(run.run_id, LIFECYCLE_TYPES)
        last_event = None if archived is None else archived.payload()
        checkpoint = await d.store.runs.last_checkpoint(run.run_id)
        answers = await d.store.interrupts.answers(run.run_id)

    async def save(step: int, state: dict[str, Any]) -> None:
        await flush(st, d)  # the events of a checkpointed step are committed first
        await retry_unavailable(
            "checkpoint",
            lambda: d.store.runs.checkpoint(run.run_id, run.attempt, [], step, state),
            stop=st.signals.lost,
            deadline=outage_deadline(d.settings),
        )

    return RunContext(
        run_id=run.run_id,
        user_id=run.user_id,
        input=run.input,
        params=run.params,
        settings=d.settings,
        attempt=run.attempt,
        thread_id=run.thread_id,
        history=history,
        checkpoint=checkpoint,
        last_event=last_event,
        cancelled=st.signals.cancel,
        save_checkpoint=save,
        tools=run_tools(d.tools, run.params),
        services=d.services,
        interrupts=handler(st, answers),
    )


async def _supervise(
    st: AttemptState, d: Deps, agent: Agent, ctx: RunContext, limit_seconds: float
) -> tuple[Ending, dict[str, Any] | None]:
    """Run the agent until it ends or a signal stops it. Returns how and the terminal body."""
    loop = asyncio.get_running_loop()
    drive = loop.create_task(_drive(st, d, agent(ctx)))
    # One future wakes the supervisor: the agent done, a signal, or the time limit.
    woken = st.signals.waiter(loop)

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    drive.add_done_callback(wake)
    timer = loop.call_later(max(limit_seconds, 0.0), wake)
    try:
        await woken
    except BaseException:
        # This attempt itself is being cancelled (the worker closes): take the agent along.
        drive.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await drive
        raise
    finally:
        timer.cancel()
    if drive.done():
        return _drive_result(st, drive)
    drive.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await drive
    await stop_flusher(st)
    sig = st.signals
    if sig.cancel.is_set():
        return Ending.CANCELLED, None
    if sig.lost.is_set():
        return Ending.LEASE_LOST, None
    if sig.wait.is_set():  # before a hand-over: a waiting run needs no other worker
        return Ending.WAITING, None
    if sig.handoff.is_set():
        return Ending.HANDOFF, None
    if sig.broken.is_set():  # a background flush failed
        if st.flush_error is not None:
            return _outcome(st, st.flush_error)
        return Ending.FINISHED, None
    return Ending.TIMEOUT, None


def _drive_result(
    st: AttemptState, drive: asyncio.Task[dict[str, Any]]
) -> tuple[Ending, dict[str, Any]]:
    exc = drive.exception()
    if exc is None:
        return Ending.FINISHED, drive.result()
    return _outcome(st, exc)


def _outcome(st: AttemptState, exc: BaseException) -> tuple[Ending, dict[str, Any]]:
    """How an attempt ends when its agent (or a flush for it) raised `exc`."""
    if isinstance(exc, LeaseLost):
        return Ending.LEASE_LOST, {}
    if isinstance(exc, RETRYABLE):
        raise exc  # an outage outlasted: `execute` leaves the run to the lease
    if st.signals.cancel.is_set():
        return Ending.CANCELLED, {}
    if isinstance(exc, EventCapExceeded | AgentError):
        return Ending.FINISHED, {"type": "error", "code": exc.code, "message": exc.detail}
    # The exception's type only: its message may quote tool output or user data.
    log.error("agent_crashed", error=type(exc).__name__)
    return Ending.FINISHED, {
        "type": "error",
        "code": "agent_crashed",
        "message": f"the agent raised {type(exc).__name__}",
    }


async def _drive(
    st: AttemptState, d: Deps, events: AsyncIterator[dict[str, Any]]
) -> dict[str, Any]:
    """Queue the agent's events; return its terminal body (not yet committed)."""
    async for body in events:
        btype = body.get("type")
        if body.get("code") in PROVIDER_ERROR_CODES:  # a failed model call: for metrics
            with contextlib.suppress(*REDIS_DOWN):
                await d.rio.count("provider_errors")
        if btype in TERMINAL_EVENT_TYPES:
            await stop_flusher(st)  # what is pending goes out with the terminal
            return body
        if btype == "usage":
            st.usage = usage_totals(st.usage, body)
        elif btype == "token" and isinstance(body.get("text"), str):
            st.output_text.append(body["text"])
        await queue(st, d, body)
    await stop_flusher(st)
    if st.signals.cancel.is_set():
        # The agent stopped on the cancel signal without saying so: it was cancelled.
        return {"type": "cancelled", "reason": "user"}
    return {"type": "done"}
