"""Provider retry policy and error classification: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import anthropic
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.llm.anthropic_model import classify
from shared.llm.retry import RetryPolicy, is_retryable_status, parse_retry_after, retry_delay

POLICY = RetryPolicy(max_retries=4, base_seconds=0.5, max_seconds=30.0)
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_backoff_doubles_its_ceiling_and_full_jitter_scales_it() -> None:
    assert [retry_delay(POLICY, n, None, 1.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(POLICY, 3, None, 0.25) == 1.0
    assert retry_delay(POLICY, 2, None, 0.0) == 0.0


def test_the_ceiling_is_capped_at_max_seconds() -> None:
    policy = RetryPolicy(max_retries=20, base_seconds=1.0, max_seconds=5.0)
    assert retry_delay(policy, 10, None, 1.0) == 5.0


def test_no_retry_is_left_after_max_retries() -> None:
    assert retry_delay(POLICY, 4, None, 0.5) is None
    assert retry_delay(RetryPolicy(0, 0.5, 30), 0, None, 0.5) is None


def test_retry_after_is_a_floor_never_shortened_by_jitter() -> None:
    assert retry_delay(POLICY, 0, 3.0, 0.1) == 3.0
    assert retry_delay(POLICY, 3, 0.1, 1.0) == 4.0


def test_a_retry_after_longer_than_the_maximum_gives_up_rather_than_come_back_early() -> None:
    assert retry_delay(POLICY, 0, 31.0, 0.5) is None


@given(
    retries=st.integers(min_value=0, max_value=3),
    rand=st.floats(min_value=0.0, max_value=1.0),
    after=st.none() | st.floats(min_value=0.0, max_value=30.0),
)
def test_every_delay_lies_between_the_floor_and_the_ceiling(
    retries: int, rand: float, after: float | None
) -> None:
    delay = retry_delay(POLICY, retries, after, rand)
    assert delay is not None
    ceiling = min(POLICY.max_seconds, POLICY.base_seconds * 2**retries)
    assert (after or 0.0) <= delay <= max(ceiling, after or 0.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Thu, 01 Jan 2026 12:00:07 GMT"}, 7.0),
        ({"retry-after": "Thu, 01 Jan 2026 11:00:00 GMT"}, 0.0),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "x"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_as_seconds_milliseconds_or_a_date(
    headers: dict[str, str], expected: float | None
) -> None:
    assert parse_retry_after(headers, NOW) == expected


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (429, None, True),
        (529, None, True),
        (500, None, True),
        (503, None, True),
        (408, None, True),
        (400, "invalid_request_error", False),
        (401, "authentication_error", False),
        (404, "not_found_error", False),
        (None, "overloaded_error", True),
        (None, "invalid_request_error", False),
    ],
)
def test_which_failures_are_worth_another_try(
    status: int | None, error_type: str | None, retryable: bool
) -> None:
    assert is_retryable_status(status, error_type) is retryable


def _response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    return httpx2.Response(status, headers=headers or {}, request=request)


def _body(error_type: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": error_type, "message": "m"}}


def test_sdk_status_errors_are_classified_with_their_retry_after() -> None:
    limited = anthropic.RateLimitError(
        "slow down", response=_response(429, {"retry-after": "3"}), body=_body("rate_limit_error")
    )
    err = classify(limited, NOW)
    assert err is not None
    assert (err.retryable, err.breaker, err.status, err.retry_after) == (True, True, 429, 3.0)

    bad = anthropic.BadRequestError(
        "no", response=_response(400), body=_body("invalid_request_error")
    )
    err = classify(bad, NOW)
    assert err is not None
    assert (err.retryable, err.breaker, err.retry_after) == (False, False, None)


def test_an_error_event_inside_an_open_stream_is_classified_by_its_type() -> None:
    # The SDK raises these with the stream's own status, 200.
    overloaded = anthropic.APIStatusError(
        "overloaded", response=_response(200), body=_body("overloaded_error")
    )
    err = classify(overloaded, NOW)
    assert err is not None
    assert err.retryable is True
    assert err.error_type == "overloaded_error"


def test_network_failures_are_retryable_and_anything_else_is_a_bug() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    for exc in (
        anthropic.APIConnectionError(request=request),
        anthropic.APITimeoutError(request),
        httpx2.RemoteProtocolError("peer closed connection"),
    ):
        err = classify(exc, NOW)
        assert err is not None
        assert err.retryable is True
    assert classify(KeyError("x"), NOW) is None
