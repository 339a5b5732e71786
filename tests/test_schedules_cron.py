"""A schedule's cadence as pure functions of instants (`shared.cron`): which ticks an expression
makes in a time zone, across daylight-saving changes, and which tick a due schedule makes after
an outage. No clock is read: every `now` is a value."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared.cron import BadCron, Cron, due_tick, parse

NY = "America/New_York"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ticks(c: Cron, start: datetime, n: int) -> list[datetime]:
    out = [c.after(start)]
    while len(out) < n:
        out.append(c.after(out[-1]))
    return out


def local(ts: list[datetime], zone: str) -> list[str]:
    return [t.astimezone(ZoneInfo(zone)).isoformat() for t in ts]


def test_the_next_tick_is_strictly_after_now_and_the_last_is_at_or_before_it():
    hourly = parse("0 * * * *", "UTC", T0)
    assert hourly.after(T0) == T0 + timedelta(hours=1)
    assert hourly.at_or_before(T0) == T0
    assert hourly.at_or_before(T0 - timedelta(microseconds=1)) == T0 - timedelta(hours=1)


def test_instants_with_microseconds_find_their_ticks_both_ways():
    # regression: croniter marks some results `fold=1`; read naively, every tick of a
    # fixed-hour schedule looked like a repeated wall-clock time and the search ran off the
    # calendar (OverflowError in the worker's ticker)
    now = datetime(2026, 12, 4, 20, 43, 37, 103674, tzinfo=UTC)
    yearly = parse("0 0 1 1 *", "UTC", now)
    assert yearly.at_or_before(now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert yearly.after(now) == datetime(2027, 1, 1, tzinfo=UTC)
    daily = parse("30 1 * * *", NY, now)
    assert daily.at_or_before(now) == datetime(2026, 12, 4, 6, 30, tzinfo=UTC)


def test_a_rare_expression_measures_its_gap_over_the_ticks_within_reach():
    # regression: the leap day's later ticks are past the search's reach; the gap check
    # raised (a 500 on POST /schedules) instead of measuring the ticks it found
    leap_day = parse("0 0 0 29 2 *", "UTC", T0)
    assert leap_day.shortest_gap(T0) >= timedelta(days=365)


def test_six_fields_read_the_first_as_seconds():
    every_5s = parse("*/5 * * * * *", "UTC", T0)
    assert ticks(every_5s, T0, 3) == [T0 + timedelta(seconds=s) for s in (5, 10, 15)]
    assert every_5s.shortest_gap(T0) == timedelta(seconds=5)
    at_second_30 = parse("30 * * * * *", "UTC", T0)
    assert at_second_30.after(T0) == T0 + timedelta(seconds=30)


def test_a_time_zone_moves_the_ticks_to_its_wall_clock():
    nine_in_tokyo = parse("0 9 * * *", "Asia/Tokyo", T0)
    assert nine_in_tokyo.after(T0) == datetime(2026, 1, 2, 0, 0, tzinfo=UTC)


def test_spring_forward_a_skipped_wall_time_fires_once_after_the_gap():
    # 02:30 does not exist in New York on 2026-03-08: that day fires at 03:00, once
    c = parse("30 2 * * *", NY, T0)
    got = local(ticks(c, datetime(2026, 3, 7, 12, tzinfo=UTC), 3), NY)
    assert got == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]


def test_fall_back_a_fixed_wall_time_fires_once_though_the_hour_repeats():
    # 01:30 happens twice in New York on 2026-11-01 (EDT, then EST): one run, at the first
    c = parse("30 1 * * *", NY, T0)
    got = local(ticks(c, datetime(2026, 10, 31, 12, tzinfo=UTC), 3), NY)
    assert got == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]
    # and looking back from inside the repeated hour finds that first one too
    second_0130 = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    assert c.at_or_before(second_0130 + timedelta(minutes=5)) == datetime(
        2026, 11, 1, 5, 30, tzinfo=UTC
    )


def test_fall_back_a_wildcard_hour_keeps_its_cadence_through_the_repeated_hour():
    c = parse("*/30 * * * *", NY, T0)
    got = ticks(c, datetime(2026, 11, 1, 4, 0, tzinfo=UTC), 6)
    # every 30 minutes of real time, both 01:00s and both 01:30s included
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(got))


def test_a_due_schedule_makes_the_tick_it_was_due_for():
    hourly = parse("0 * * * *", "UTC", T0)
    tick = due_tick(hourly, T0, T0 + timedelta(seconds=0.4))
    assert tick is not None
    assert (tick.tick_at, tick.next_at) == (T0, T0 + timedelta(hours=1))


def test_a_schedule_not_due_yet_makes_nothing():
    hourly = parse("0 * * * *", "UTC", T0)
    assert due_tick(hourly, T0, T0 - timedelta(microseconds=1)) is None


def test_missed_ticks_make_one_run_for_the_most_recent_then_the_cadence_resumes():
    # Given an hourly schedule due at T0, and every worker down for 5.5 hours
    hourly = parse("0 * * * *", "UTC", T0)
    now = T0 + timedelta(hours=5, minutes=30)
    # When a worker ticks again: the run of 17:00 only (12:00 to 16:00 are skipped) ...
    tick = due_tick(hourly, T0, now)
    assert tick is not None
    assert tick.tick_at == T0 + timedelta(hours=5)
    # ... and the next tick is the cadence's next, not a catch-up
    assert tick.next_at == T0 + timedelta(hours=6)


@pytest.mark.parametrize(
    ("expr", "zone", "says"),
    [
        ("61 * * * *", "UTC", "cron"),
        ("* * *", "UTC", "5 fields"),
        ("* * * * * * *", "UTC", "5 fields"),
        ("a b c d e", "UTC", "cron"),
        ("0 0 30 2 *", "UTC", "no tick"),
        ("@reboot", "UTC", "nickname"),
        ("", "UTC", "cron"),
        ("* * * * *", "Mars/Olympus", "timezone"),
        ("* * * * *", "../../etc/passwd", "timezone"),
        ("* * * * *", "", "timezone"),
    ],
)
def test_an_invalid_expression_or_zone_is_refused_with_what_is_wrong(expr, zone, says):
    with pytest.raises(BadCron, match=says):
        parse(expr, zone, T0)
