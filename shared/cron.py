"""A schedule's cadence: a cron expression in an IANA time zone, as pure functions of instants
(no clock is read here: callers pass `now`, so tests drive a fake one).

The expression is parsed by `croniter` with tz-aware datetimes (`zoneinfo`), which carries the
daylight-saving rules:
- five fields (`minute hour day month weekday`), or six with a leading seconds field
  (`second minute hour day month weekday`, as Quartz and cronsim read it), or one of the
  `@hourly`-style nicknames;
- spring forward: a wall-clock time the day skips (02:30 in New York on the March change) fires
  at the first instant after the gap (03:00), once;
- fall back: when the hour field names fixed hours (`30 1 * * *`), a wall-clock time the day
  repeats fires at its first occurrence only, as cron(8) does; a schedule whose hour field is a
  wildcard (`*/15 * * * *`) keeps its cadence through the repeated hour (every instant counts).

Missed ticks (every worker down for a while): `due_tick` answers the most recent tick at or
before `now` and the first one after it. The schedule makes one run for that tick and resumes
its cadence; the ticks in between are skipped, not made up in a burst. (And a tick while the
schedule's previous run is still queued makes no run: `shared.store.schedules`.)
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

NICKNAMES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
MAX_EXPRESSION_CHARS = 256
MAX_ZONE_CHARS = 64
# The shortest gap between two ticks is measured over this many ticks ahead.
GAP_SAMPLE = 64
# Ticks passed over in a row (a repeated wall-clock time) before a search gives up.
MAX_SKIPS = 8
# croniter's search for a date that matches gives up after this many years (`0 0 30 2 *`).
SEARCH_YEARS = 5


class BadCron(ValueError):
    """An expression or time zone that names no cadence; its text says what is wrong."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression and its zone. Build with `parse`."""

    expr: str
    zone: ZoneInfo
    seconds: bool  # six fields: the first is seconds
    fixed_hours: bool  # the hour field names hours (no wildcard): see the module docstring

    def _next(self, it: croniter, *, prev: bool) -> datetime:
        try:
            tick: datetime = it.get_prev(datetime) if prev else it.get_next(datetime)
        except CroniterBadDateError:
            raise BadCron(f"cron: no tick within {SEARCH_YEARS} years") from None
        return tick

    def _iter(self, start: datetime, *, is_prev: bool = False) -> croniter:
        return croniter(
            self.expr,
            start.astimezone(self.zone),
            second_at_beginning=self.seconds,
            max_years_between_matches=SEARCH_YEARS,
            is_prev=is_prev,
        )

    def _repeat(self, tick: datetime) -> bool:
        """A tick at the second occurrence of a wall-clock time (fall back), when skipped.
        (The instant's own fold, from UTC: croniter may set `fold` on times that are not
        ambiguous, and `astimezone` to the same zone keeps it.)"""
        return self.fixed_hours and tick.astimezone(UTC).astimezone(self.zone).fold == 1

    def after(self, t: datetime) -> datetime:
        """The first tick strictly after `t` (aware), in UTC."""
        it = self._iter(t)
        for _ in range(MAX_SKIPS):
            tick = self._next(it, prev=False)
            if tick > t and not self._repeat(tick):
                return tick.astimezone(UTC)
        raise BadCron("cron: no tick found")

    def at_or_before(self, t: datetime) -> datetime:
        """The last tick at or before `t` (aware), in UTC."""
        it = self._iter(t + timedelta(microseconds=1), is_prev=True)
        for _ in range(MAX_SKIPS):
            tick = self._next(it, prev=True)
            if tick <= t and not self._repeat(tick):
                return tick.astimezone(UTC)
        raise BadCron("cron: no tick found")

    def shortest_gap(self, start: datetime, n: int = GAP_SAMPLE) -> timedelta:
        """The shortest time between two of the `n` ticks after `start` (of those found within
        the search's reach: `timedelta.max` when fewer than two are)."""
        ticks = [self.after(start)]
        with contextlib.suppress(BadCron):
            for _ in range(n - 1):
                ticks.append(self.after(ticks[-1]))
        return min((b - a for a, b in itertools.pairwise(ticks)), default=timedelta.max)


def zone_of(name: str) -> ZoneInfo:
    """The IANA zone `name` (`Europe/Paris`, `UTC`); BadCron when there is none such."""
    if not name or len(name) > MAX_ZONE_CHARS or name.startswith(("/", ".")) or ".." in name:
        raise BadCron("timezone: an IANA time zone name, e.g. Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadCron(f"timezone: no IANA time zone is named {name!r}") from None


def parse(expr: str, timezone: str, now: datetime) -> Cron:
    """The cadence of `expr` in `timezone`; BadCron when either is invalid or the expression
    has no tick within a few years of `now`."""
    zone = zone_of(timezone)
    text = " ".join(expr.split())
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        raise BadCron(f"cron: 1-{MAX_EXPRESSION_CHARS} characters")
    fields = text.split(" ")
    if text.startswith("@"):
        if text.lower() not in NICKNAMES:
            raise BadCron(f"cron: a nickname is one of {', '.join(sorted(NICKNAMES))}")
        text = text.lower()
        fixed = text != "@hourly"
        seconds = False
    elif len(fields) in (5, 6):
        seconds = len(fields) == 6
        hour = fields[2 if seconds else 1]
        fixed = "*" not in hour and "?" not in hour
    else:
        raise BadCron("cron: 5 fields (minute hour day month weekday), or 6 with seconds first")
    try:
        cron = Cron(text, zone, seconds, fixed)
        cron.after(now)
    except CroniterBadDateError:
        raise BadCron(f"cron: no tick within {SEARCH_YEARS} years") from None
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise BadCron(f"cron: {exc}" if str(exc) else "cron: not a valid expression") from None
    return cron


@dataclass(frozen=True)
class Tick:
    """What a due schedule does at `now`: make the run of `tick_at`, then wait for `next_at`."""

    tick_at: datetime
    next_at: datetime


def due_tick(cron: Cron, next_tick_at: datetime, now: datetime) -> Tick | None:
    """None when the schedule is not due (`next_tick_at` after `now`). Else the most recent
    tick at or before `now` (never before `next_tick_at`: an outage's older ticks are skipped)
    and the first tick after `now`."""
    if next_tick_at > now:
        return None
    tick = max(cron.at_or_before(now), next_tick_at)
    return Tick(tick_at=tick, next_at=cron.after(now))
