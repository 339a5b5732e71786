"""An attempt's events: batched as the agent yields them, committed to Postgres (the truth,
fenced on the attempt and the log's last seq), then copied to Redis for fan-out.

    agent yields ─> pending ─(the loop's next turn, or BATCH_MAX)─> flush:
        encode seqs ─> caps ─> Postgres commit (grouped) ─> Redis copy (grouped) ─> seq moves on

No client can see an event before Postgres has it, so no fault can take back or replace an
event a client saw, and a re-claimed attempt continues from Postgres' last seq. A Redis copy
that fails leaves the events in `unsent`, sent with the next copy; Redis takes what it lacks
and skips what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from shared.errors import LeaseLost
from shared.models import Event, encode_event
from shared.redis.pipeline import ScriptCall
from shared.redis.runs import AppendResult, EventCapExceeded
from shared.store import EventBatch
from worker.attempt.state import UNSENT_MAX, AttemptState, Deps, outage_deadline
from worker.batches import Written
from worker.policies import RETRYABLE, retry_unavailable

log = structlog.get_logger("longrun.worker")
# What ends a best-effort refill of Redis.
REFILL_GIVES_UP: tuple[type[BaseException], ...] = (LeaseLost, *RETRYABLE)

# Events an agent yields in a burst are committed together, and a batch holds at most
# BATCH_MAX events. An attempt's first batch (its `start` or `resumed` and what follows at once)
# waits up to FIRST_LINGER_SECONDS for company: a short run (a tool call, a ticker) then commits
# everything with its end, once (bench.dispatch: ~12% more runs/s than committing `start`
# alone). Every later batch waits only for the loop's next turn: a timed wait there was that
# long on every first token after a pause (a model's first token, a paced agent's every one;
# bench.stream_ttft). What the agent yields while a commit is in flight goes with the next.
FIRST_LINGER_SECONDS = 0.002
BATCH_MAX = 64


async def queue(st: AttemptState, d: Deps, body: dict[str, Any]) -> None:
    """Add a body to the next batch; a full batch is flushed now, a partial one by the flusher
    at the loop's next turn."""
    if st.flush_error is not None:
        raise st.flush_error
    st.pending.append(body)
    if len(st.pending) >= BATCH_MAX:
        await flush(st, d)
    elif st.linger is None and (st.flusher is None or st.flusher.done()):
        if st.committed_events:
            # The flusher itself, which first runs at the loop's next turn: a timer of 0 s
            # that then started it took one turn more on every paced event's way.
            st.flusher = asyncio.create_task(_flush_later(st, d))
        else:
            # A timer, not a task: a run that ends within its first linger (its pending
            # events go with the terminal one) never starts a flusher.
            st.linger = asyncio.get_running_loop().call_later(
                FIRST_LINGER_SECONDS, _linger_over, st, d
            )


def _linger_over(st: AttemptState, d: Deps) -> None:
    st.linger = None
    st.flusher = asyncio.create_task(_flush_later(st, d))


async def _flush_later(st: AttemptState, d: Deps) -> None:
    """The background flush. It commits in its own task, not through `flush`'s shielded one
    (a turn less): `stop_flusher` cancels it only while it does not hold the lock, so a
    commit it started always ends, and what it had not taken stays pending."""
    try:
        while st.pending:  # what was queued during a flush goes next
            await _flush_locked(st, d)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        failed_in_background(st, exc)


def failed_in_background(st: AttemptState, exc: BaseException) -> None:
    """A background flush failed: the supervisor ends the attempt on it."""
    st.flush_error = exc
    (st.signals.lost if isinstance(exc, LeaseLost) else st.signals.broken).set()


async def flush(st: AttemptState, d: Deps) -> None:
    """Commit what is pending (then copy it to Redis). The commit runs to its end even when the
    caller is cancelled meanwhile (the agent stopped by a cancel, a time limit): its outcome is
    the attempt's state (`seq`), which the run's end reads under the same lock."""
    if not st.pending:
        return
    task = asyncio.ensure_future(_flush_locked(st, d))
    task.add_done_callback(lambda t: _noted(st, t))
    await asyncio.shield(task)


def _noted(st: AttemptState, task: asyncio.Future[None]) -> None:
    """A flush's failure is the attempt's, whether or not its caller is still there."""
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, LeaseLost):
        failed_in_background(st, exc)


async def _flush_locked(st: AttemptState, d: Deps) -> None:
    async with st.lock:
        if not st.pending:
            return
        bodies, st.pending = st.pending, []
        try:
            await commit(st, d, encode(st, bodies))
        except EventCapExceeded:
            if len(bodies) == 1:
                raise
            # Keep every event that still fits, one by one, up to the cap.
            for body in bodies:
                await commit(st, d, encode(st, [body]))


async def stop_flusher(st: AttemptState) -> None:
    """Stop the flusher without flushing its batch: a flush in progress completes (its commit
    may have landed), a waiting one is cancelled."""
    if st.linger is not None:
        st.linger.cancel()
        st.linger = None
    task, st.flusher = st.flusher, None
    if task is None or task.done():
        return
    if st.lock.locked():
        with contextlib.suppress(Exception):
            await asyncio.shield(task)
    else:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def encode(st: AttemptState, bodies: list[dict[str, Any]]) -> list[Event]:
    return [encode_event(st.seq + 1 + i, b) for i, b in enumerate(bodies)]


def check_caps(st: AttemptState, d: Deps, events: list[Event]) -> None:
    """Refuse a batch that would take the run past its event count or byte caps (a terminal
    event alone is always let through, so a capped run can still end)."""
    s = d.settings
    if len(events) == 1 and events[0].terminal:
        return
    size = sum(len(e.data) for e in events)
    if events[-1].seq > s.max_events_per_run or st.event_bytes + size > s.max_event_bytes_per_run:
        raise EventCapExceeded("the run's events exceed the per-run cap")


def copy_call(st: AttemptState, d: Deps, events: list[Event], *, terminal: bool) -> ScriptCall:
    """The Redis copy of `events`, with whatever an earlier copy could not deliver first."""
    assert st.run is not None
    ttl = d.settings.events_ttl_seconds if terminal else 0
    return d.rio.append_call(
        st.run_id,
        st.run.attempt,
        [*st.unsent, *events],
        ttl=ttl,
        terminal=terminal,
        fence=st.first_write,
    )


async def copied(
    st: AttemptState, d: Deps, events: list[Event], written: Written, *, terminal: bool = False
) -> None:
    """After a commit: note how the Redis copy went, and fill the hole Redis reported."""
    if written.redis is not None:
        _took(st, written.redis)
        return
    st.unsent.extend(events)
    del st.unsent[:-UNSENT_MAX]
    if written.gap is not None:
        await fill_gap(st, d, written.gap, terminal=terminal)


def _took(st: AttemptState, res: AppendResult) -> None:
    st.unsent.clear()
    st.first_write = None
    if res.cancel_requested:
        st.signals.cancel.set()


async def fill_gap(st: AttemptState, d: Deps, redis_seq: int, *, terminal: bool = False) -> None:
    """Redis lost events of the run (restarted, failed over): copy it what it lacks from the
    archive, up to the attempt's last commit, so live readers need not go to the archive.
    At most UNSENT_MAX of the newest (older ones stay a hole the archive fills). Best effort:
    a failure leaves the events in `unsent` for the next copy."""
    assert st.run is not None
    run = st.run
    after = max(redis_seq, st.seq - UNSENT_MAX)
    try:
        missing = await d.store.runs.events_after(run.run_id, after, st.seq - after)
        if not missing:
            return
        res = await d.rio.append(
            run.run_id,
            run.attempt,
            missing,
            ttl=d.settings.events_ttl_seconds if terminal else 0,
            terminal=terminal,
            gaps=True,
            fence=st.first_write,
        )
    except REFILL_GIVES_UP as exc:
        log.warning("redis_refill_failed", error=type(exc).__name__)
        return
    if isinstance(res, AppendResult):
        _took(st, res)
        log.info("redis_refilled", from_seq=missing[0].seq, to_seq=missing[-1].seq)


async def commit(st: AttemptState, d: Deps, events: list[Event]) -> None:
    """Commit events to Postgres, then copy them to Redis; ride out outages (a retry after a
    lost reply finds its events committed: the store settles it by reading)."""
    assert st.run is not None
    check_caps(st, d, events)
    batch = EventBatch(st.run_id, st.run.attempt, events)
    written: Written = await retry_unavailable(
        "append",
        lambda: d.writes.append(batch, copy_call(st, d, events, terminal=False)),
        stop=st.signals.lost,
        deadline=outage_deadline(d.settings),
    )
    st.seq = events[-1].seq
    st.event_bytes += batch.size
    st.committed_events = True
    await copied(st, d, events, written)
