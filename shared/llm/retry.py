"""Provider retry policy, as pure functions: which failures are worth another try, how long to
wait (exponential backoff with full jitter, never sooner than the server's `retry-after`), and
when to give up. The SDK's own retries are disabled (`max_retries=0`) so these are the only ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from shared.config import Settings

# HTTP statuses worth retrying: timeouts, lock conflicts, rate limits, server errors, overload.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# Error types the API sends inside an already-open stream (HTTP status 200).
RETRYABLE_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_retries=settings.provider_max_retries,
            base_seconds=settings.provider_retry_base_seconds,
            max_seconds=settings.provider_retry_max_seconds,
        )


def is_retryable_status(status: int | None, error_type: str | None = None) -> bool:
    if status is not None and (status in RETRYABLE_STATUSES or status >= 500):
        return True
    return error_type in RETRYABLE_ERROR_TYPES


def retry_delay(
    policy: RetryPolicy, retries_done: int, retry_after: float | None, rand: float
) -> float | None:
    """Seconds to wait before retry number `retries_done + 1`, or None to give up.

    Full jitter: uniform in [0, min(max, base * 2**retries_done)], `rand` being a draw in [0, 1).
    A `retry-after` is a floor, not a hint: when it is longer than `max_seconds` we give up
    rather than come back early."""
    if retries_done >= policy.max_retries:
        return None
    ceiling = min(policy.max_seconds, policy.base_seconds * (2.0**retries_done))
    jittered = max(0.0, min(rand, 1.0)) * ceiling
    if retry_after is None:
        return jittered
    if retry_after > policy.max_seconds:
        return None
    return max(retry_after, jittered)


def parse_retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, `retry-after` as seconds or as an
    HTTP date (relative to `now`, which must be aware). None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable
