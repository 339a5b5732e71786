"""How an attempt ends, and the signals that stop it from outside (cancel listener, heartbeat,
drain): the supervisor waits on one future that any of them resolves."""

from __future__ import annotations

import asyncio
from enum import StrEnum


class Ending(StrEnum):
    FINISHED = "finished"
    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"
    HANDOFF = "handoff"
    TIMEOUT = "timeout"
    WAITING = "waiting"  # the agent interrupted: the run waits for a person


class _Signal(asyncio.Event):
    """An event that also wakes its attempt's supervisor when set (the cancel signal: agents
    may await it). No reference back to `Signals`: a cycle per attempt would leave its objects
    to the cyclic collector."""

    def __init__(self) -> None:
        super().__init__()
        self.waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        if not self.is_set():
            super().set()
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)


class _Flag:
    """A signal nothing awaits but the supervisor (lease lost, hand-over, broken): a flag and
    the supervisor's wake-up, without an `asyncio.Event`'s waiter queue (one per attempt)."""

    __slots__ = ("_set", "waiter")

    def __init__(self) -> None:
        self._set = False
        self.waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)


class Signals:
    """Set from outside the attempt (cancel listener, heartbeat, drain). The supervisor waits
    on one future that any of them resolves (not one task per signal)."""

    __slots__ = ("broken", "cancel", "handoff", "lost", "wait")

    def __init__(self) -> None:
        self.cancel = _Signal()
        self.lost = _Flag()
        self.handoff = _Flag()
        self.broken = _Flag()  # a background append failed
        self.wait = _Flag()  # the agent interrupted (`ctx.interrupt`): pause the run

    def any_set(self) -> bool:
        return (
            self.cancel.is_set()
            or self.lost._set
            or self.handoff._set
            or self.broken._set
            or self.wait._set
        )

    def waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future resolved when any signal is set (at once if one already is)."""
        fut: asyncio.Future[None] = loop.create_future()
        self.cancel.waiter = self.lost.waiter = self.handoff.waiter = fut
        self.broken.waiter = self.wait.waiter = fut
        if self.any_set():
            fut.set_result(None)
        return fut
