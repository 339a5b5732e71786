"""How an attempt ends the run: the terminal events appended under the fence, then the terminal
state and the rest of the archive committed, then the queue entry acked (a run outside a thread
with other attempts' in one flush); or, on a drain, archived, re-queued and handed over."""

from __future__ import annotations

import contextlib
from typing import Any

import structlog

from shared.agents.base import RunContext
from shared.errors import LeaseLost
from shared.history import invalidate
from shared.logs import info_line
from shared.models import Event, RunStatus, Transition, encode_event, transition
from shared.redisio import REDIS_DOWN, EventCapExceeded, SeqConflict
from shared.store import Finishing
from worker.attempt_base import AttemptBase
from worker.batches import APPENDED, COMMITTED
from worker.policies import RETRYABLE, retry_unavailable
from worker.signals import Ending

log = structlog.get_logger("longrun.worker")

# What sends a grouped ending down the attempt's own path, one step at a time.
SLOW_PATH: tuple[type[BaseException], ...] = (EventCapExceeded, SeqConflict, *RETRYABLE)


class EndingSteps(AttemptBase):
    async def _end(self, ending: Ending, terminal: dict[str, Any] | None, ctx: RunContext) -> None:
        if ending is Ending.LEASE_LOST:
            if self.archiver is not None:
                self.archiver.cancel()  # its write would be fenced out anyway
            log.warning("lease_lost", stage="run")
            return
        if ending is Ending.HANDOFF:
            await self._handoff()
            return
        if ending is Ending.CANCELLED:
            await self._finish({"type": "cancelled", "reason": "user"}, Transition.CANCEL)
            return
        if ending is Ending.TIMEOUT:
            await self._finish_error("timeout", "the run exceeded its time limit")
            return
        assert terminal is not None
        if terminal.get("type") == "done":
            if "output" not in terminal:
                output = ctx.output if ctx.output is not None else "".join(self.output_text)
                terminal = {**terminal, "output": output}
            await self._finish(terminal, Transition.SUCCEED)
        elif terminal.get("type") == "cancelled":
            await self._finish(terminal, Transition.CANCEL)
        else:
            await self._finish(terminal, Transition.FAIL)

    async def _finish_error(self, code: str, message: str) -> None:
        await self._finish({"type": "error", "code": code, "message": message}, Transition.FAIL)

    async def _finish(self, terminal: dict[str, Any], move: Transition) -> None:
        d = self.deps
        assert self.run is not None
        await self._archive_settled()
        ctx = self.ctx
        if ctx is not None and ctx.usage:
            self.usage = dict(ctx.usage)  # the agent's own totals include a cut-off turn
        if self.usage:
            terminal = {**terminal, "usage": self.usage}
        # Only a finished run adds to its thread: a failed or cancelled turn may have
        # unanswered tool calls, which would poison the next run's history.
        messages = ctx.new_messages if ctx is not None and move is Transition.SUCCEED else []
        error = None
        if terminal["type"] == "error":
            error = {"code": terminal.get("code"), "message": terminal.get("message")}
        deadline = self._deadline()
        next_run = None
        try:
            stage = 0
            if self.run.thread_id is None and d.writes is not None:
                stage = await self._end_grouped(terminal, move, error)
            if stage < APPENDED:
                await retry_unavailable(
                    "append_terminal",
                    lambda: self._emit_terminal(terminal),
                    stop=self.signals.lost,
                    deadline=deadline,
                )
            if stage < COMMITTED:
                next_run = await retry_unavailable(
                    "commit_terminal",
                    lambda: self._commit_terminal(move, terminal, error, messages),
                    stop=self.signals.lost,
                    deadline=deadline,
                )
        except LeaseLost:
            log.warning("lease_lost", stage="finish")
            return
        self.unarchived = []
        if self.on_committed is not None:
            self.on_committed()  # the run is durable: its slot may take the next one
        if messages and self.run.thread_id is not None:
            await invalidate(d.rio.r, d.rio.keys, self.run.user_id, self.run.thread_id)
        if next_run is not None:
            # The thread's next run waited for this one: queue it now.
            await retry_unavailable(
                "enqueue_next",
                lambda: d.rio.enqueue(next_run),
                stop=self.signals.lost,
                deadline=deadline,
            )
        await retry_unavailable(
            "ack",
            lambda: d.rio.ack(d.consumer, self.entry.entry_id),
            stop=self.signals.lost,
            deadline=deadline,
        )
        # The status the run ended with, as the API names it (`succeeded`, not `succeed`).
        ended = transition(RunStatus.RUNNING, move)
        info_line("longrun.worker", "run_finished", status=str(ended), terminal=terminal["type"])

    async def _end_grouped(
        self, terminal: dict[str, Any], move: Transition, error: dict[str, Any] | None
    ) -> int:
        """A run outside a thread ends with other attempts': its terminal append and commit
        ride one flush (`RunWrites.end`). Returns how far that got (0: not even the
        append, which `_finish` then retries knowing a lost reply may hide a landed append).
        LeaseLost passes through."""
        d = self.deps
        assert self.run is not None
        assert d.writes is not None
        async with self.lock:
            events = self._terminal_batch(terminal)
            call = d.rio.append_call(
                self.run_id,
                self.run.attempt,
                events,
                ttl=d.settings.events_ttl_seconds,
                over_cap=True,
                fence=self.first_write,
            )
            finishing = self._finishing(move, terminal, error, [*self.unarchived, *events])
            try:
                stage = await d.writes.end(call, finishing)
            except SLOW_PATH:
                self.terminal_tried = True
                return 0
            self.first_write = None
            self.seq = events[-1].seq
            self.unarchived.extend(events)
            return stage

    def _finishing(
        self,
        move: Transition,
        terminal: dict[str, Any],
        error: dict[str, Any] | None,
        events: list[Event],
    ) -> Finishing:
        assert self.run is not None
        return Finishing(
            self.run_id,
            self.run.attempt,
            move,
            events,
            output=terminal.get("output"),
            error=error,
            usage=self.usage or None,
            cost_usd=float(self.usage.get("cost_usd", 0.0)),
        )

    async def _commit_terminal(
        self,
        move: Transition,
        terminal: dict[str, Any],
        error: dict[str, Any] | None,
        messages: list[dict[str, Any]],
    ) -> str | None:
        """The terminal state and the rest of the archive, fenced on the attempt. A run outside
        a thread goes with other attempts' in one statement; a thread's run in its own
        transaction (its messages, and the thread's next run to enqueue)."""
        d = self.deps
        assert self.run is not None
        if self.run.thread_id is None and d.writes is not None:
            finishing = self._finishing(move, terminal, error, list(self.unarchived))
            await d.writes.end(None, finishing)
            return None
        return await d.store.finish(
            self.run_id,
            self.run.attempt,
            move,
            self.unarchived,
            output=terminal.get("output"),
            error=error,
            usage=self.usage or None,
            cost_usd=float(self.usage.get("cost_usd", 0.0)),
            messages=messages,
            thread=self.run.thread_id is not None,
        )

    def _terminal_batch(self, body: dict[str, Any]) -> list[Event]:
        """What is pending plus the terminal event, encoded once (retries send the same)."""
        if not self.terminal_events:
            bodies, self.pending = [*self.pending, body], []
            self.terminal_events = [encode_event(self.seq + 1 + i, b) for i, b in enumerate(bodies)]
        return self.terminal_events

    async def _emit_terminal(self, body: dict[str, Any]) -> None:
        """Append what is pending plus the terminal event in one call (the terminal one is
        allowed past the per-run cap), and start the TTL. Idempotent across retries."""
        assert self.run is not None
        if self.unarchived and self.unarchived[-1].terminal:
            return  # appended on an earlier try
        ttl = self.deps.settings.events_ttl_seconds
        async with self.lock:
            events = self._terminal_batch(body)
            try:
                await self._append(events, ttl=ttl, over_cap=True, tried=self.terminal_tried)
            except EventCapExceeded:
                # The pending events would pass the cap: end with the terminal alone.
                log.warning("pending_events_over_cap", dropped=len(events) - 1)
                events = self.terminal_events = [encode_event(self.seq + 1, body)]
                await self._append(events, ttl=ttl, over_cap=True)
            self.seq = events[-1].seq
            self.unarchived.extend(events)

    async def _handoff(self) -> None:
        d = self.deps
        assert self.run is not None
        await self._archive_settled()
        try:
            ok = await d.store.requeue(self.run_id, self.run.attempt, self.unarchived)
        except RETRYABLE:
            log.warning("handoff_failed", reason="postgres")
            return  # the lease will move it
        if not ok:
            log.warning("lease_lost", stage="handoff")
            return
        self.unarchived = []
        with contextlib.suppress(*REDIS_DOWN):
            await d.rio.handoff(d.consumer, self.entry)
            await d.rio.r.hincrby(d.rio.keys.counters, "handoffs", 1)
        log.info("run_handed_over")
