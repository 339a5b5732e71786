"""A circuit breaker per model: the pure state machine, the store seam, and the object the loop
talks to.

States: `closed` (calls flow; calls and failures are counted in time buckets), `open` (calls
fail fast for `open_seconds`), `half_open` (one probe call is let through; its success closes
the breaker, its failure re-opens it). The breaker opens when, over the sliding window, at least
`min_calls` calls were made and the failure share reached `error_rate`.

Everything is decided by pure functions of (state, tallies, now). The store keeps the state and
the counters where every worker sees them (Redis: `breaker_store`; memory for a lone process or
tests) and changes the state only by compare-and-set on its `version`, so when two workers race
to open a breaker or to send the probe exactly one wins. The time is wall-clock seconds because
it is compared across processes. A store that cannot be reached fails open: the breaker protects
the provider, it must not become an outage of its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

import structlog

from shared.config import Settings
from shared.errors import LongrunError

log = structlog.get_logger("longrun.breaker")


class BreakerStatus(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    ALLOW = "allow"
    PROBE = "probe"
    REJECT = "reject"


@dataclass(frozen=True)
class BreakerState:
    status: BreakerStatus = BreakerStatus.CLOSED
    # Bumped each time the breaker closes, so counts from before it opened are not carried over.
    epoch: int = 0
    opened_at: float = 0.0
    probe_at: float = 0.0
    version: int = 0


@dataclass(frozen=True)
class Tally:
    calls: float = 0.0
    failures: float = 0.0


@dataclass(frozen=True)
class BreakerPolicy:
    window_seconds: float
    min_calls: int
    error_rate: float
    open_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerPolicy:
        return cls(
            window_seconds=settings.breaker_window_seconds,
            min_calls=settings.breaker_min_calls,
            error_rate=settings.breaker_error_rate,
            open_seconds=settings.breaker_open_seconds,
        )


# -- pure decisions ----------------------------------------------------------------------------


def bucket_of(now: float, window_seconds: float) -> int:
    return math.floor(now / window_seconds)


def window_tally(previous: Tally, current: Tally, now: float, window_seconds: float) -> Tally:
    """Sliding-window estimate from two fixed buckets: all of the current bucket plus the part of
    the previous one that still overlaps the window ending at `now`."""
    into = (now / window_seconds) - bucket_of(now, window_seconds)
    weight = 1.0 - into
    return Tally(
        calls=current.calls + previous.calls * weight,
        failures=current.failures + previous.failures * weight,
    )


def should_open(tally: Tally, policy: BreakerPolicy) -> bool:
    if tally.calls < policy.min_calls or tally.calls <= 0:
        return False
    return tally.failures / tally.calls >= policy.error_rate


def admit(
    state: BreakerState, now: float, policy: BreakerPolicy
) -> tuple[Admission, BreakerState | None]:
    """May a call go out now? Returns the admission and the state to compare-and-set (None when
    nothing changes). An open breaker whose time is up lets one probe through; a probe that never
    reported back (its worker died) is replaced after another `open_seconds`."""
    if state.status is BreakerStatus.CLOSED:
        return Admission.ALLOW, None
    if state.status is BreakerStatus.OPEN:
        if now - state.opened_at < policy.open_seconds:
            return Admission.REJECT, None
        return Admission.PROBE, replace(state, status=BreakerStatus.HALF_OPEN, probe_at=now)
    if now - state.probe_at < policy.open_seconds:
        return Admission.REJECT, None
    return Admission.PROBE, replace(state, probe_at=now)


def after_call(
    state: BreakerState, ok: bool, tally: Tally, now: float, policy: BreakerPolicy
) -> BreakerState | None:
    """The state after a call ended (`tally` already counts it), or None when unchanged."""
    if state.status is BreakerStatus.HALF_OPEN:
        if ok:
            return BreakerState(status=BreakerStatus.CLOSED, epoch=state.epoch + 1)
        return replace(state, status=BreakerStatus.OPEN, opened_at=now)
    if state.status is BreakerStatus.CLOSED and not ok and should_open(tally, policy):
        return replace(state, status=BreakerStatus.OPEN, opened_at=now)
    return None


# -- the store seam and the breaker ------------------------------------------------------------


class BreakerStoreDown(LongrunError):
    code = "breaker_store_down"


class BreakerStore(Protocol):
    """Shared state of every model's breaker. Raises BreakerStoreDown when unreachable."""

    async def load(self, model: str) -> BreakerState: ...

    async def compare_and_set(self, model: str, expected: int, new: BreakerState) -> bool:
        """Write `new` (with version `expected + 1`) if the stored version is `expected`."""
        ...

    async def count(
        self, model: str, epoch: int, bucket: int, ok: bool, ttl_seconds: float
    ) -> tuple[Tally, Tally]:
        """Count one call in `bucket`; return the (previous, current) buckets' tallies."""
        ...


class Breaker(Protocol):
    """What the agent loop sees."""

    async def allow(self, model: str) -> bool: ...

    async def record(self, model: str, ok: bool) -> None: ...


class CircuitBreaker:
    def __init__(
        self,
        store: BreakerStore,
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    async def allow(self, model: str) -> bool:
        try:
            state = await self.store.load(model)
            admission, new = admit(state, self.clock(), self.policy)
            if new is not None:
                won = await self.store.compare_and_set(model, state.version, new)
                if not won:
                    return False  # another worker sent the probe or changed the state first
            if admission is Admission.PROBE:
                log.info("breaker_probe", model=model)
            return admission is not Admission.REJECT
        except BreakerStoreDown:
            log.warning("breaker_store_down", model=model, action="allow")
            return True

    async def record(self, model: str, ok: bool) -> None:
        now = self.clock()
        try:
            state = await self.store.load(model)
            window = self.policy.window_seconds
            previous, current = await self.store.count(
                model, state.epoch, bucket_of(now, window), ok, ttl_seconds=window * 2 + 1
            )
            tally = window_tally(previous, current, now, window)
            new = after_call(state, ok, tally, now, self.policy)
            if new is not None and await self.store.compare_and_set(model, state.version, new):
                log.warning("breaker_" + str(new.status), model=model, calls=tally.calls)
        except BreakerStoreDown:
            log.warning("breaker_store_down", model=model, action="record")


class MemoryBreakerStore:
    """One process's breakers (the offline default and tests without Redis)."""

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}
        self.buckets: dict[tuple[str, int, int], Tally] = {}

    async def load(self, model: str) -> BreakerState:
        return self.states.get(model, BreakerState())

    async def compare_and_set(self, model: str, expected: int, new: BreakerState) -> bool:
        if self.states.get(model, BreakerState()).version != expected:
            return False
        self.states[model] = replace(new, version=expected + 1)
        return True

    async def count(
        self, model: str, epoch: int, bucket: int, ok: bool, ttl_seconds: float
    ) -> tuple[Tally, Tally]:
        key = (model, epoch, bucket)
        cur = self.buckets.get(key, Tally())
        cur = Tally(cur.calls + 1, cur.failures + (0 if ok else 1))
        self.buckets[key] = cur
        # Only the previous and current buckets matter: drop older ones to stay bounded.
        for k in [k for k in self.buckets if k[0] == model and k[2] < bucket - 1]:
            del self.buckets[k]
        return self.buckets.get((model, epoch, bucket - 1), Tally()), cur
