"""The worker's pure decisions, tested as values: a run's time limit and what is left of it,
usage totals, and when a worker must stop its runs because it could not renew its leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.config import Settings
from worker.liveness import lease_expired_locally, renew_interval
from worker.policies import remaining_seconds, run_timeout, usage_totals

S = Settings(run_timeout_seconds=600.0, max_run_timeout_seconds=3600.0)


@pytest.mark.parametrize(
    ("params", "limit"),
    [
        ({}, 600.0),
        ({"timeout_seconds": 30}, 30.0),
        ({"timeout_seconds": 2.5}, 2.5),
        ({"timeout_seconds": 99_999}, 3600.0),  # capped by the configured maximum
        ({"timeout_seconds": 0}, 600.0),  # nonsense falls back to the default
        ({"timeout_seconds": -5}, 600.0),
        ({"timeout_seconds": True}, 600.0),
        ({"timeout_seconds": "60"}, 600.0),
    ],
)
def test_a_runs_time_limit_is_what_it_asks_for_within_the_maximum(
    params: dict[str, object], limit: float
) -> None:
    assert run_timeout(S, params) == limit


def test_time_left_counts_from_the_first_start_across_attempts() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert remaining_seconds(60.0, None, now) == 60.0
    assert remaining_seconds(60.0, now - timedelta(seconds=45), now) == 15.0
    assert remaining_seconds(60.0, now - timedelta(seconds=90), now) == 0.0


def test_usage_events_add_up_and_ignore_what_is_not_a_number() -> None:
    total = usage_totals({}, {"type": "usage", "input_tokens": 100, "cost_usd": 0.001})
    total = usage_totals(total, {"input_tokens": 5, "output_tokens": 7, "cost_usd": 0.0002})
    total = usage_totals(total, {"input_tokens": True, "output_tokens": "9"})
    assert total == {"input_tokens": 105, "output_tokens": 7, "cost_usd": 0.0012}


def test_a_worker_stops_its_runs_before_another_may_take_them() -> None:
    lease = 10.0
    assert renew_interval(lease) == pytest.approx(10 / 3)
    assert renew_interval(0.1) == 0.05  # never a busy loop
    assert not lease_expired_locally(last_renewal=100.0, now=107.9, lease=lease)
    assert lease_expired_locally(last_renewal=100.0, now=108.1, lease=lease)
