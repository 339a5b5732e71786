"""An attempt whose agent asked a person (`ctx.interrupt`): the answer recorded by an earlier
resume given back at once, or the run paused and released.

    agent: await ctx.interrupt(payload)
      ├─ answered before (this run's `run_interrupts`, by key) ─> the value, at once
      └─ else: the wait signal; the supervisor stops the agent, then `wait`:
           1. Postgres: pending events + `interrupt` event archived, interrupt recorded,
              run -> waiting (fenced on attempt and last seq; refused by a cancel asked first)
           2. the slot is free; Redis gets a copy of the events (best effort)
           3. the queue entry is acked and deleted: XLEN is runnable work only

A call is matched to its answer by `interrupt_key`: the payload's digest and how many times
this attempt asked it, so a resumed attempt that replays the agent from its checkpoint finds
the answer whatever it repeated before the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import Counter
from typing import Any

import orjson
import structlog

from shared.agents.base import Interrupt, InterruptHandler
from shared.errors import LeaseLost
from shared.logs import info_line
from shared.models import Event, Transition
from shared.redis.runs import EventCapExceeded, Gap
from shared.store import Asking
from worker.attempt.end import COPY_GIVES_UP, finish, finish_error
from worker.attempt.log import check_caps, encode, fill_gap
from worker.attempt.state import AttemptState, Deps, outage_deadline
from worker.policies import retry_unavailable

log = structlog.get_logger("longrun.worker")


def interrupt_key(payload: Any, asked: Counter[str]) -> str:
    """The payload's digest and its occurrence in this attempt (`asked` counts them)."""
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    asked[digest] += 1
    return f"{digest}:{asked[digest]}"


def handler(st: AttemptState, answers: dict[str, Any]) -> InterruptHandler:
    """`ctx.interrupts` for one attempt: `answers` are the run's recorded answers by key."""
    asked: Counter[str] = Counter()

    async def interrupt(ask: Interrupt) -> Any:
        key = interrupt_key(ask.payload, asked)
        if key in answers:
            return answers[key]
        st.asking = (ask, key, uuid.uuid4().hex)
        st.signals.wait.set()
        # The supervisor stops the agent here (cancelled); the run waits, released.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable: the attempt ends while the run waits")

    return interrupt


def interrupt_body(q: Interrupt, interrupt_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "interrupt", "interrupt_id": interrupt_id, "payload": q.payload}
    if q.timeout_seconds is not None:
        body["timeout_seconds"] = q.timeout_seconds
        body["on_timeout"] = "default" if q.has_default else "error"
    return body


async def wait(st: AttemptState, d: Deps) -> None:
    """Commit the run's move to `waiting`, then release it (see the module docstring)."""
    run = st.run
    assert run is not None
    assert st.asking is not None
    q, _, interrupt_id = st.asking
    try:
        # Under the lock: a flush still committing (its caller was cancelled) ends first, and
        # the events are numbered after it.
        async with st.lock:
            events = encode(st, [*st.pending, interrupt_body(q, interrupt_id)])
            check_caps(st, d, events)
            asking = _asking(st, events)
            outcome = await retry_unavailable(
                "commit_wait",
                lambda: d.store.interrupts.wait(asking),
                stop=st.signals.lost,
                deadline=outage_deadline(d.settings),
            )
    except EventCapExceeded as exc:
        await finish_error(st, d, exc.code, "the run's events exceed the per-run cap")
        return
    except LeaseLost:
        log.warning("lease_lost", stage="wait")
        return
    if outcome == "cancel":  # asked before the interrupt: the run ends cancelled
        await finish(st, d, {"type": "cancelled", "reason": "user"}, Transition.CANCEL)
        return
    st.pending = []
    st.seq = events[-1].seq
    st.event_bytes += sum(len(e.data) for e in events)
    if st.on_committed is not None:
        st.on_committed()
    await _copy(st, d, events)
    await retry_unavailable(
        "ack",
        lambda: d.rio.ack(d.consumer, st.entry.entry_id),
        stop=st.signals.lost,
        deadline=outage_deadline(d.settings),
    )
    info_line("longrun.worker", "run_waiting", interrupt_id=interrupt_id)


def _asking(st: AttemptState, events: list[Event]) -> Asking:
    """The wait's write: the interrupt, its events, and the run's usage so far."""
    run = st.run
    assert run is not None
    assert st.asking is not None
    q, key, interrupt_id = st.asking
    ctx = st.ctx
    usage = dict(ctx.usage) if ctx is not None and ctx.usage else st.usage
    return Asking(
        run.run_id,
        run.attempt,
        interrupt_id,
        key,
        q.payload,
        q.timeout_seconds,
        q.has_default,
        q.default if q.has_default else None,
        events,
        usage=usage or None,
        cost_usd=float(usage.get("cost_usd", 0.0)),
    )


async def _copy(st: AttemptState, d: Deps, events: list[Event]) -> None:
    """The events to Redis for live followers (best effort: readers fill a hole from the
    archive). They expire like a fence does, a waiting run's log being left open."""
    run = st.run
    assert run is not None
    with contextlib.suppress(*COPY_GIVES_UP):
        res = await d.rio.append(
            run.run_id,
            run.attempt,
            [*st.unsent, *events],
            ttl=d.settings.events_ttl_seconds * 24,
            fence=st.first_write,
        )
        if isinstance(res, Gap):
            await fill_gap(st, d, res.redis_seq)
        else:
            st.unsent.clear()
            st.first_write = None
