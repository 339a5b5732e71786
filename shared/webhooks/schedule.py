"""What follows an attempt, decided by a pure function of its answer: delivered (any 2xx),
stopped for good (410 Gone: the receiver asks for no more), or retried after an exponential
backoff with jitter (`base * 2^(n-1)`, at most `max_delay`, drawn from its upper half; longer
when the answer's `Retry-After` asks, within `max_delay`), until the schedule's length or its
number of attempts is spent. A 3xx is a failure: redirects are not followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.config import Settings


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Policy:
    base_delay: float
    max_delay: float
    schedule_seconds: float  # no attempt starts later than this after the schedule began
    max_attempts: int

    @classmethod
    def of(cls, s: Settings) -> Policy:
        return cls(
            s.webhook_retry_base_seconds,
            s.webhook_retry_max_seconds,
            s.webhook_schedule_seconds,
            s.webhook_max_attempts,
        )


@dataclass(frozen=True)
class Verdict:
    state: State
    delay: float | None = None  # seconds to the next attempt (PENDING only)
    reason: str | None = None  # why it stopped (FAILED only)


def backoff(policy: Policy, attempt: int, rand: float) -> float:
    """The wait after the `attempt`-th failure (1-based); `rand` in [0, 1) picks its jitter."""
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt - 1, 60))
    return ceiling / 2 + ceiling / 2 * rand


def retry_after(raw: str | None) -> float | None:
    """A `Retry-After` in seconds (its date form is not honoured)."""
    if raw is None or not raw.strip().isdigit():
        return None
    return float(raw.strip())


def verdict(
    policy: Policy,
    code: int | None,
    attempt: int,
    elapsed: float,
    rand: float,
    wait_hint: float | None = None,
) -> Verdict:
    """After the `attempt`-th attempt of the current schedule (begun `elapsed` seconds ago),
    answered `code` (None: no answer: a timeout, a refused connection, a refused target)."""
    if code is not None and 200 <= code < 300:
        return Verdict(State.DELIVERED)
    if code == 410:
        return Verdict(State.FAILED, reason="gone")
    delay = backoff(policy, attempt, rand)
    if wait_hint is not None:
        delay = max(delay, min(wait_hint, policy.max_delay))
    if attempt >= policy.max_attempts or elapsed + delay > policy.schedule_seconds:
        return Verdict(State.FAILED, reason="schedule_spent")
    return Verdict(State.PENDING, delay=delay)
