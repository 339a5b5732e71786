"""One attempt at one run: claim it in Postgres, raise the Redis fence, drive the agent, append
its events under the fence, and end it: terminal state committed (with the event archive) first,
queue entry acked and deleted last.

The attempt ends in exactly one of these ways:
- the agent finishes (done / error / crash / event cap / timeout): terminal state committed;
- a cancel is requested: `cancelled` committed, usage so far kept;
- the lease is lost (another attempt owns the run): nothing more is written, nothing acked;
- the worker hands it over (drain): events archived, run re-queued, entry handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import structlog

from shared.agents import Agent
from shared.agents.base import RunContext
from shared.errors import AgentError, LeaseLost, Unavailable
from shared.history import load_history
from shared.logs import info_line
from shared.models import TERMINAL_EVENT_TYPES, Event, Run, encode_event
from shared.redis.client import REDIS_DOWN
from shared.redis.runs import EventCapExceeded, SeqConflict
from shared.tools import run_tools
from worker.attempt_base import Deps
from worker.batches import Claimed
from worker.ending import EndingSteps
from worker.policies import (
    remaining_seconds,
    retry_unavailable,
    run_timeout,
    usage_totals,
)
from worker.signals import Ending

log = structlog.get_logger("longrun.worker")

__all__ = ["LIFECYCLE_TYPES", "Attempt", "Deps", "Ending"]


# Events the worker itself adds; an agent resuming looks past them for its own last event.
LIFECYCLE_TYPES = frozenset({"start", "resumed", "notice"})
ARCHIVE_EVERY_EVENTS = 200
ARCHIVE_EVERY_SECONDS = 2.0
# Events an agent yields in a burst are appended together: the first waits at most this long
# for company, and a batch holds at most BATCH_MAX events.
LINGER_SECONDS = 0.002
BATCH_MAX = 64
# Event codes that mean a model provider call failed (retried, or ending the run).
PROVIDER_ERROR_CODES = frozenset({"provider_retry", "provider_error"})


class Attempt(EndingSteps):
    """Claim, fence, drive the agent and append its events; `EndingSteps` ends the run."""

    # -- entry point -------------------------------------------------------------------------
    async def execute(self) -> None:
        d = self.deps
        claimed = Claimed(None, None)
        if self.run_id:
            claimed = await retry_unavailable(
                "claim", self._claim, stop=self.signals.lost, deadline=self._deadline()
            )
        run = claimed.run
        if run is None:
            # Unknown, finished, cancelled, or a duplicate entry of a run another worker holds.
            await d.rio.ack(d.consumer, self.entry.entry_id)
            log.info("entry_skipped", run_id=self.run_id, entry=self.entry.entry_id)
            return
        self.run = run
        structlog.contextvars.bind_contextvars(run_id=run.run_id, attempt=run.attempt)
        if isinstance(claimed.fence, LeaseLost):
            log.warning("lease_lost", stage="fence")
            return
        try:
            fence = claimed.fence or await retry_unavailable(
                "fence",
                lambda: d.rio.fence(
                    run.run_id, run.attempt, d.consumer, run.last_seq, self.entry.entry_id
                ),
                stop=self.signals.lost,
                deadline=self._deadline(),
            )
        except LeaseLost:
            log.warning("lease_lost", stage="fence")
            return
        self.seq = fence.seq
        if fence.deferred:
            self.first_write = (d.consumer, self.entry.entry_id)
        info_line("longrun.worker", "run_claimed", agent=run.agent, reclaimed=self.reclaimed)
        if self.poison:
            await self._finish_error("max_attempts", "the run was delivered too many times")
            return
        if fence.cancel_requested or run.cancel_requested:
            self.signals.cancel.set()
        await self._drive_and_end(run)

    async def _claim(self) -> Claimed:
        """Claim the run in Postgres; with grouped writes its fence comes in the same flush."""
        d = self.deps
        if d.writes is not None:
            return await d.writes.claim(
                self.run_id, reclaim=self.reclaimed, entry_id=self.entry.entry_id
            )
        return Claimed(await d.store.runs.claim(self.run_id, reclaim=self.reclaimed), None)

    async def _drive_and_end(self, run: Run) -> None:
        d = self.deps
        agent = d.agents.get(run.agent)
        if agent is None:
            await self._finish_error("unknown_agent", f"no agent named {run.agent!r}")
            return
        first: dict[str, Any] = (
            {"type": "resumed", "attempt": run.attempt}
            if run.attempt > 1
            else {"type": "start", "agent": run.agent}
        )
        try:
            await self._queue(first)
            ctx = self.ctx = await self._context(run)
        except LeaseLost:
            log.warning("lease_lost", stage="start")
            return
        limit = run_timeout(d.settings, run.params)
        left = remaining_seconds(limit, run.started_at, datetime.now(UTC))
        ending, terminal = await self._supervise(agent, ctx, left)
        await self._end(ending, terminal, ctx)

    async def _context(self, run: Run) -> RunContext:
        d = self.deps
        last_event = None
        checkpoint = None
        history: list[dict[str, Any]] = []
        if run.thread_id is not None:
            history = await load_history(d.store, d.rio.threads, run.user_id, run.thread_id)
        if run.attempt > 1:
            last_event = await self._last_agent_event(run.run_id)
            checkpoint = await d.store.runs.last_checkpoint(run.run_id)

        async def save(step: int, state: dict[str, Any]) -> None:
            await self._flush()  # the events of a checkpointed step are appended first
            await self._archive_settled()
            await retry_unavailable(
                "checkpoint",
                lambda: self._archive(step=step, state=state),
                stop=self.signals.lost,
                deadline=self._deadline(),
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
            cancelled=self.signals.cancel,
            save_checkpoint=save,
            tools=run_tools(d.tools, run.params),
            services=d.services,
        )

    async def _last_agent_event(self, run_id: str) -> dict[str, Any] | None:
        for e in await self.deps.rio.last_events(run_id, 50):
            if e.type not in LIFECYCLE_TYPES:
                return e.payload()
        e2 = await self.deps.store.runs.last_archived_event(run_id, LIFECYCLE_TYPES)
        return None if e2 is None else e2.payload()

    # -- driving the agent -------------------------------------------------------------------
    async def _supervise(
        self, agent: Agent, ctx: RunContext, limit_seconds: float
    ) -> tuple[Ending, dict[str, Any] | None]:
        """Run the agent until it ends or a signal stops it. Returns how and the terminal body."""
        loop = asyncio.get_running_loop()
        drive = loop.create_task(self._drive(agent(ctx)))
        # One future wakes the supervisor: the agent done, a signal, or the time limit.
        woken = self.signals.waiter(loop)

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
            return self._drive_result(drive)
        drive.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await drive
        await self._stop_flusher()
        sig = self.signals
        if sig.cancel.is_set():
            return Ending.CANCELLED, None
        if sig.lost.is_set():
            return Ending.LEASE_LOST, None
        if sig.handoff.is_set():
            return Ending.HANDOFF, None
        if sig.broken.is_set():  # a background append failed
            if self.flush_error is not None:
                return self._outcome(self.flush_error)
            return Ending.FINISHED, None
        return Ending.TIMEOUT, None

    def _drive_result(self, drive: asyncio.Task[dict[str, Any]]) -> tuple[Ending, dict[str, Any]]:
        exc = drive.exception()
        if exc is None:
            return Ending.FINISHED, drive.result()
        return self._outcome(exc)

    def _outcome(self, exc: BaseException) -> tuple[Ending, dict[str, Any]]:
        """How an attempt ends when its agent (or an append for it) raised `exc`."""
        if isinstance(exc, LeaseLost):
            return Ending.LEASE_LOST, {}
        if self.signals.cancel.is_set():
            return Ending.CANCELLED, {}
        if isinstance(exc, EventCapExceeded):
            return Ending.FINISHED, {"type": "error", "code": exc.code, "message": exc.detail}
        if isinstance(exc, AgentError):
            return Ending.FINISHED, {"type": "error", "code": exc.code, "message": exc.detail}
        # The exception's type only: its message may quote tool output or user data.
        log.error("agent_crashed", error=type(exc).__name__)
        return Ending.FINISHED, {
            "type": "error",
            "code": "agent_crashed",
            "message": f"the agent raised {type(exc).__name__}",
        }

    async def _drive(self, events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
        """Append the agent's events; return its terminal body (not yet appended)."""
        async for body in events:
            btype = body.get("type")
            if body.get("code") in PROVIDER_ERROR_CODES:  # a failed model call: for metrics
                with contextlib.suppress(*REDIS_DOWN):
                    await self.deps.rio.count("provider_errors")
            if btype in TERMINAL_EVENT_TYPES:
                await self._stop_flusher()  # what is pending goes out with the terminal
                return body
            if btype == "usage":
                self.usage = usage_totals(self.usage, body)
            elif btype == "token" and isinstance(body.get("text"), str):
                self.output_text.append(body["text"])
            await self._queue(body)
        await self._stop_flusher()
        if self.signals.cancel.is_set():
            # The agent stopped on the cancel signal without saying so: it was cancelled.
            return {"type": "cancelled", "reason": "user"}
        return {"type": "done"}

    async def _queue(self, body: dict[str, Any]) -> None:
        """Add a body to the next batch; a full batch is appended now, a partial one by the
        flusher within LINGER_SECONDS."""
        if self.flush_error is not None:
            raise self.flush_error
        self.pending.append(body)
        if len(self.pending) >= BATCH_MAX:
            await self._flush()
        elif self.linger is None and (self.flusher is None or self.flusher.done()):
            # A timer, not a task: a run that ends within the linger (its pending events go
            # with the terminal one) never starts a flusher.
            self.linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._linger_over)

    def _linger_over(self) -> None:
        self.linger = None
        self.flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            while self.pending:  # what was queued during an append goes next
                await self._flush()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed_in_background(exc)

    def _failed_in_background(self, exc: BaseException) -> None:
        """A background append or archive failed: the supervisor ends the attempt on it."""
        self.flush_error = exc
        (self.signals.lost if isinstance(exc, LeaseLost) else self.signals.broken).set()

    async def _flush(self) -> None:
        async with self.lock:
            if not self.pending:
                return
            bodies, self.pending = self.pending, []
            try:
                cancel = await self._emit(bodies)
            except EventCapExceeded:
                if len(bodies) == 1:
                    raise
                # Keep every event that still fits, one by one, up to the cap.
                cancel = False
                for body in bodies:
                    cancel = await self._emit([body]) or cancel
            if cancel:
                self.signals.cancel.set()

    async def _stop_flusher(self) -> None:
        """Stop the flusher without appending its batch: a flush in progress completes (its
        append may have landed), a waiting one is cancelled."""
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        task, self.flusher = self.flusher, None
        if task is None or task.done():
            return
        if self.lock.locked():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _emit(self, bodies: list[dict[str, Any]], ttl: int = 0) -> bool:
        """Append under the fence; returns whether a cancel was requested meanwhile."""
        events = [encode_event(self.seq + 1 + i, b) for i, b in enumerate(bodies)]
        cancel = await self._append(events, ttl=ttl)
        self.seq = events[-1].seq
        self.unarchived.extend(events)
        if (
            len(self.unarchived) >= ARCHIVE_EVERY_EVENTS
            or time.monotonic() - self.last_archive > ARCHIVE_EVERY_SECONDS
        ) and (self.archiver is None or self.archiver.done()):
            # In the background: the next events need not wait for a Postgres commit (inline,
            # the first events after a pause of over 2 s came 70-130 ms late). Whatever reads
            # `unarchived` to commit it (a checkpoint, the end, a handoff) waits for it first.
            self.archiver = asyncio.create_task(self._archive_in_background())
        return cancel

    async def _archive_in_background(self) -> None:
        try:
            await self._archive()
        except Unavailable:
            # Postgres is away: keep the events and try again later; the run goes on.
            self.last_archive = time.monotonic()
            log.warning("archive_deferred", pending=len(self.unarchived))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed_in_background(exc)

    async def _archive_settled(self) -> None:
        """Wait for a background archive (its failure is already in the signals)."""
        task, self.archiver = self.archiver, None
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _append(
        self, events: list[Event], *, ttl: int, over_cap: bool = False, tried: bool = False
    ) -> bool:
        """Append under the fence, riding out a short Redis outage. A retry whose first try
        did land (the reply was lost) shows as a seq conflict with our own last event
        (`tried`: these events were sent before, elsewhere)."""
        assert self.run is not None
        attempt = self.run.attempt

        async def once() -> bool:
            nonlocal tried
            try:
                res = await self.deps.rio.append(
                    self.run_id, attempt, events, ttl=ttl, over_cap=over_cap, fence=self.first_write
                )
                self.first_write = None
                return res.cancel_requested
            except SeqConflict:
                last = await self.deps.rio.last_events(self.run_id, 1)
                if tried and last and last[0].seq == events[-1].seq:
                    return False
                raise
            finally:
                tried = True

        result: bool = await retry_unavailable(
            "append", once, stop=self.signals.lost, deadline=self._deadline()
        )
        return result

    async def _archive(self, step: int | None = None, state: dict[str, Any] | None = None) -> None:
        assert self.run is not None
        batch, self.unarchived = self.unarchived, []
        try:
            await self.deps.store.runs.checkpoint(self.run_id, self.run.attempt, batch, step, state)
        except BaseException:
            self.unarchived = batch + self.unarchived
            raise
        self.last_archive = time.monotonic()
