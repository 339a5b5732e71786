"""One SSE client's view of a run (`Subscription`), as the hub (`api.hub`) fills it and the
client's stream (`api.streams`, `api.events`) drains it: the events pushed to it, and the flags
that say why it woke (events pending, `behind`: re-read from Redis, `idle`: send a keep-alive,
`stopped`). Its idle keep-alive and its stalled-send watchdog (a send blocked SEND_TIMEOUT
seconds: the client stopped reading) share one timer, re-armed only when it fires."""

from __future__ import annotations

import asyncio

from shared.models import Event

SEND_TIMEOUT = 30.0  # a send blocked this long (the client stopped reading) ends the stream


class Subscription:
    """One SSE client's view of a run: events the hub pushed and flags telling it why it woke.

    `wait()` returns when there is something to do: pending events, `behind` (re-read from
    Redis), `idle` (no delivery for `idle_seconds`: send a keep-alive), or `stopped` (server
    shutting down, client gone)."""

    __slots__ = (
        "_loop",
        "_timer",
        "_waiter",
        "active_at",
        "behind",
        "early",
        "idle",
        "idle_seconds",
        "pending",
        "pending_bytes",
        "read_at",
        "run_id",
        "sending_since",
        "stalled",
        "stopped",
        "task",
    )

    def __init__(self, run_id: str, idle_seconds: float) -> None:
        self.run_id = run_id
        self.pending: list[Event] = []
        self.pending_bytes = 0
        self.behind = False
        self.early = False  # subscribed before its run's channel was confirmed
        self.idle = False
        self.stopped = False
        self.stalled = False
        self.read_at = 0.0  # monotonic time of the hub read that pushed the oldest pending event
        self._loop = asyncio.get_running_loop()
        self.active_at = self._loop.time()
        self.sending_since = 0.0  # loop time a send started, 0 when not sending
        self.idle_seconds = idle_seconds
        self.task: asyncio.Task[object] | None = None  # cancelled when a send stalls
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            self.active_at + idle_seconds, self._tick
        )

    def take(self) -> list[Event]:
        got, self.pending = self.pending, []
        self.pending_bytes = 0
        return got

    def wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        if self.pending or self.behind or self.idle or self.stopped:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def mark_active(self) -> None:
        self.active_at = self._loop.time()
        self.idle = False

    def stop(self) -> None:
        self.stopped = True
        self.wake()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        now = self._loop.time()
        if self.sending_since and now - self.sending_since >= SEND_TIMEOUT:
            self.stalled = True
            if self.task is not None:
                self.task.cancel()
            self._timer = None
            return
        due = self.active_at + self.idle_seconds
        if now >= due:
            self.idle = True
            self.wake()
            due = now + self.idle_seconds
        if self.sending_since:
            due = min(due, self.sending_since + SEND_TIMEOUT)
        self._timer = self._loop.call_at(due, self._tick)
