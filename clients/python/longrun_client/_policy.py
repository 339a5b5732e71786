"""The client's decisions, as pure functions of values: when an error answer is retried and after
how long, the jittered backoff between reconnects, and where a stream stands (`Cursor`), which
is what makes `runs.stream` lose and repeat nothing.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from httpx_sse import ServerSentEvent

from longrun_client.errors import APIError
from longrun_client.models import Event, parse_event

RETRIED_STATUSES = frozenset({429, 503})
BACKOFF_BASE = 0.25
BACKOFF_CAP = 5.0


def retry_delay(error: APIError, attempt: int, max_retries: int, max_wait: float) -> float | None:
    """Seconds to wait before sending a refused request again, or None to give up: only 429 and
    503 (refusals that wrote nothing) are retried, `max_retries` times, after their Retry-After
    (or the backoff without one); a Retry-After longer than `max_wait` is not waited out."""
    if error.status not in RETRIED_STATUSES or attempt >= max_retries:
        return None
    if error.retry_after is None:
        return backoff(attempt)
    return error.retry_after if error.retry_after <= max_wait else None


def backoff(attempt: int, hint: float | None = None, rand: float | None = None) -> float:
    """The wait before reconnect number `attempt` (0, 1, ...): the server's `retry:` hint when it
    gave one, else BACKOFF_BASE doubling up to BACKOFF_CAP; "equal jitter" (half fixed, half
    random), so that clients cut off together do not come back together."""
    ceiling = hint if hint is not None else min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
    r = random.random() if rand is None else rand  # noqa: S311 (spreading load, not a secret)
    return ceiling / 2 + ceiling / 2 * r


class Reconnect(Exception):
    """The stream cannot go on from here (a gap, or the server's `stream_error`): reconnect."""


@dataclass
class Cursor:
    """Where a stream stands: the seq of the last event handed to the caller (None: none yet)
    and the server's latest `retry:` hint, in seconds."""

    last: int | None = None
    hint: float | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.last is None else {"Last-Event-ID": str(self.last)}

    def take(self, sse: ServerSentEvent) -> Event | None:
        """The event to hand over for one SSE message, or None for anything else: a keep-alive
        or hint, an event already handed over (a server resending it after a reconnect). An
        event past the next one (a gap) raises `Reconnect`: resume from the last one."""
        if sse.retry is not None:
            self.hint = sse.retry / 1000
        data = _json_object(sse.data)
        if data is None or not isinstance(data.get("seq"), int) or "type" not in data:
            if sse.event == "stream_error":
                raise Reconnect(sse.data)
            return None  # (httpx-sse repeats the last id on id-less frames: the seq decides)
        seq = data["seq"]
        expected = (self.last or 0) + 1
        if seq < expected:
            return None
        if seq > expected:
            raise Reconnect(f"event {seq} arrived after {expected - 1}")
        self.last = seq
        return parse_event(data)


def _json_object(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Deadline:
    """A wait's time budget (`total` seconds, None for none) and how long each poll asks for."""

    total: float | None
    start: float = field(default_factory=time.monotonic)

    def poll(self, longest: float) -> float:
        if self.total is None:
            return longest
        return max(0.0, min(longest, self.total - (time.monotonic() - self.start)))

    def expired(self) -> bool:
        return self.total is not None and time.monotonic() - self.start >= self.total


def reopen_delay(
    error: APIError,
    connected: bool,
    attempt: int,
    hint: float | None,
    max_retries: int,
    max_wait: float,
) -> float | None:
    """Seconds before opening a stream again after an error answer, or None to raise it. Before
    the stream was ever open, the rule of every request (`retry_delay`); once it was, a 5xx or
    429 (the API restarting, a proxy between deploys) is waited out like a dropped connection."""
    if not connected:
        return retry_delay(error, attempt, max_retries, max_wait)
    if error.status != 429 and error.status < 500:
        return None
    if error.retry_after is not None:
        return min(error.retry_after, max_wait)
    return backoff(attempt, hint)
