"""How an attempt ends the run: its last events and terminal state committed to Postgres in
one fenced statement (a run outside a thread with other attempts' in one flush), copied to
Redis (closing the run's log there), then the queue entry acked; or, on a drain or a lost
queue entry, the run re-queued and its entry handed over.

The entry is acked only once the terminal commit is known to have succeeded: confirmed by the
statement, or, when the reply was lost, by reading the run's row back."""

from __future__ import annotations

import contextlib
from typing import Any

import structlog

from shared.agents.base import RunContext
from shared.errors import LeaseLost
from shared.history import invalidate
from shared.logs import info_line
from shared.models import Event, Transition, transition
from shared.redis.client import REDIS_DOWN
from shared.redis.runs import EventCapExceeded, Gap
from shared.store import Finishing
from worker.attempt.log import check_caps, copied, copy_call, encode, fill_gap
from worker.attempt.state import AttemptState, Deps, outage_deadline
from worker.batches import Written
from worker.policies import RETRYABLE, retry_unavailable
from worker.signals import Ending

log = structlog.get_logger("longrun.worker")

# What ends a best-effort copy to Redis after the commit.
COPY_GIVES_UP: tuple[type[BaseException], ...] = (LeaseLost, *RETRYABLE)


async def end(
    st: AttemptState,
    d: Deps,
    ending: Ending,
    terminal: dict[str, Any] | None,
    ctx: RunContext,
) -> None:
    if ending is Ending.LEASE_LOST:
        log.warning("lease_lost", stage="run")
        return
    if ending is Ending.HANDOFF:
        await handoff(st, d)
        return
    if ending is Ending.CANCELLED:
        await finish(st, d, {"type": "cancelled", "reason": "user"}, Transition.CANCEL)
        return
    if ending is Ending.TIMEOUT:
        await finish_error(st, d, "timeout", "the run exceeded its time limit")
        return
    assert terminal is not None
    if terminal.get("type") == "done":
        if "output" not in terminal:
            output = ctx.output if ctx.output is not None else "".join(st.output_text)
            terminal = {**terminal, "output": output}
        await finish(st, d, terminal, Transition.SUCCEED)
    elif terminal.get("type") == "cancelled":
        await finish(st, d, terminal, Transition.CANCEL)
    else:
        await finish(st, d, terminal, Transition.FAIL)


async def finish_error(st: AttemptState, d: Deps, code: str, message: str) -> None:
    await finish(st, d, {"type": "error", "code": code, "message": message}, Transition.FAIL)


def terminal_batch(st: AttemptState, d: Deps, body: dict[str, Any]) -> list[Event]:
    """What is pending plus the terminal event, encoded once (every retry sends the same); the
    terminal event alone when the pending ones would pass the caps."""
    if not st.terminal_events:
        bodies, st.pending = [*st.pending, body], []
        events = encode(st, bodies)
        try:
            check_caps(st, d, events[:-1] or events)
        except EventCapExceeded:
            log.warning("pending_events_over_cap", dropped=len(events) - 1)
            events = encode(st, [body])
        st.terminal_events = events
    return st.terminal_events


async def finish(st: AttemptState, d: Deps, terminal: dict[str, Any], move: Transition) -> None:
    run = st.run
    assert run is not None
    ctx = st.ctx
    if ctx is not None and ctx.usage:
        st.usage = dict(ctx.usage)  # the agent's own totals include a cut-off turn
    if st.usage:
        terminal = {**terminal, "usage": st.usage}
    # Only a finished run adds to its thread: a failed or cancelled turn may have unanswered
    # tool calls, which would poison the next run's history.
    async with st.lock:  # a flush still committing (its caller was cancelled) ends first
        if move is Transition.SUCCEED and _over_caps(st, d):
            # The agent's last events do not fit: the run did not produce what it said it
            # did, so it fails (as a flush past the cap fails it), never `done` with a hole.
            log.warning("pending_events_over_cap", dropped=len(st.pending))
            st.pending = []
            terminal = {
                "type": "error",
                "code": EventCapExceeded.code,
                "message": "the run's events exceed the per-run cap",
                **({"usage": st.usage} if st.usage else {}),
            }
            move = Transition.FAIL
        messages = ctx.new_messages if ctx is not None and move is Transition.SUCCEED else []
        error = None
        if terminal["type"] == "error":
            error = {"code": terminal.get("code"), "message": terminal.get("message")}
        return await _commit_end(st, d, terminal, move, messages, error)


def _over_caps(st: AttemptState, d: Deps) -> bool:
    """Whether the events still pending would take the run past its caps."""
    if not st.pending:
        return False
    try:
        check_caps(st, d, encode(st, st.pending))
    except EventCapExceeded:
        return True
    return False


async def _commit_end(
    st: AttemptState,
    d: Deps,
    terminal: dict[str, Any],
    move: Transition,
    messages: list[dict[str, Any]],
    error: dict[str, Any] | None,
) -> None:
    run = st.run
    assert run is not None
    events = terminal_batch(st, d, terminal)
    finishing = Finishing(
        st.run_id,
        run.attempt,
        move,
        events,
        output=terminal.get("output"),
        error=error,
        usage=st.usage or None,
        cost_usd=float(st.usage.get("cost_usd", 0.0)),
    )
    next_run: str | None = None
    try:
        if run.thread_id is None:
            written: Written = await retry_unavailable(
                "commit_terminal",
                lambda: d.writes.end(finishing, copy_call(st, d, events, terminal=True)),
                stop=st.signals.lost,
                deadline=outage_deadline(d.settings),
            )
        else:
            next_run = await retry_unavailable(
                "commit_terminal",
                lambda: d.store.runs.finish(finishing, messages),
                stop=st.signals.lost,
                deadline=outage_deadline(d.settings),
            )
            written = Written(None)
    except LeaseLost:
        log.warning("lease_lost", stage="finish")
        return
    # The run's end is durable: its slot may take the next run while Redis catches up.
    st.seq = events[-1].seq
    if st.on_committed is not None:
        st.on_committed()
    await copied(st, d, events, written, terminal=True)
    if written.redis is None and written.gap is None:
        await _copy_terminal(st, d)
    if st.unsent and st.on_short_tail is not None:
        # Redis did not take the end (away, or failing over as the run ended): without it a
        # live follower would wait on Redis for an end it never gets.
        st.on_short_tail()
    if messages and run.thread_id is not None:
        with contextlib.suppress(*REDIS_DOWN):
            await invalidate(d.rio.threads, run.user_id, run.thread_id)
    deadline = outage_deadline(d.settings)
    if next_run is not None:
        # The thread's next run waited for this one: queue it now.
        await retry_unavailable(
            "enqueue_next",
            lambda: _enqueue_next(d, next_run),
            stop=st.signals.lost,
            deadline=deadline,
        )
    await retry_unavailable(
        "ack",
        lambda: d.rio.ack(d.consumer, st.entry.entry_id),
        stop=st.signals.lost,
        deadline=deadline,
    )
    info_line("longrun.worker", "run_finished", status=str(transition(run.status, move)))


async def _copy_terminal(st: AttemptState, d: Deps) -> None:
    """Copy the run's last events to Redis after the commit (a thread's run, or a copy that
    failed with the commit): best effort, since readers fill a hole from the archive; a live
    follower sees the end at once only through Redis."""
    run = st.run
    assert run is not None
    events = st.unsent
    if not events:
        return
    try:
        res = await retry_unavailable(
            "copy_terminal",
            lambda: d.rio.append(
                run.run_id,
                run.attempt,
                events,
                ttl=d.settings.events_ttl_seconds,
                terminal=True,
                fence=st.first_write,
            ),
            stop=st.signals.lost,
            deadline=outage_deadline(d.settings),
        )
    except COPY_GIVES_UP as exc:
        log.warning("terminal_copy_failed", error=type(exc).__name__)
        return
    if isinstance(res, Gap):
        await fill_gap(st, d, res.redis_seq, terminal=True)
    else:
        st.unsent.clear()


async def _enqueue_next(d: Deps, run_id: str) -> None:
    """Queue a thread's next run with what its entry carries (its user, its priority)."""
    for item in await d.store.runs.queue_items([run_id]):
        await d.rio.enqueue(item)


async def handoff(st: AttemptState, d: Deps) -> None:
    """Re-queue the run (fenced on this attempt) and hand its entry over at once: on a drain,
    or when Redis lost the entry (nothing would ever re-claim it). What was committed stays;
    what is pending is not part of the run (the next attempt resumes from the commit)."""
    assert st.run is not None
    try:
        ok = await d.store.runs.requeue(st.run_id, st.run.attempt, [])
    except RETRYABLE:
        log.warning("handoff_failed", reason="postgres")
        return  # the lease will move it
    if not ok:
        log.warning("lease_lost", stage="handoff")
        return
    with contextlib.suppress(*REDIS_DOWN):
        await d.rio.handoff(d.consumer, st.entry)
        await d.rio.count("handoffs")
    log.info("run_handed_over", reason=st.handoff_reason)
