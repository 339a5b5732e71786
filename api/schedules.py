"""The schedules resource: a user's cron schedules, each making one run per tick (the workers'
ticker makes them: `worker.schedules`).

    POST   /schedules                 201 the schedule, Location: /schedules/{id}
    GET    /schedules                 the caller's, newest first, paged like GET /runs
    GET    /schedules/{id}            one of them
    DELETE /schedules/{id}            204; no tick after it
    GET    /schedules/{id}/runs       the runs it made, newest tick first

The run template is checked by the submit's own checks (`api.submit.request.checked_agent` on
the `SubmitRun` it makes), so a schedule holds only runs `POST /runs` would accept; the cron
expression and time zone by `shared.cron`. Every refusal is a 4xx before anything is written.
Isolation as for runs: another user's schedule is the same 404 as a missing one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import current_user, principal_of
from api.errors import ERROR_RESPONSES, ApiError, JSONResp
from api.links import public_base
from api.runs import EPOCH, make_cursor
from api.schemas import (
    CURSOR,
    CURSOR_PATTERN,
    NONBLANK_PATTERN,
    RUN_ID,
    RUN_ID_PATTERN,
    THREAD_ID_PATTERN,
    RunPublic,
    documented,
)
from api.state import AppState
from api.submit.request import SubmitRun, checked_agent
from shared import cron
from shared.cron import MAX_EXPRESSION_CHARS, MAX_ZONE_CHARS
from shared.errors import NotFound
from shared.store import NewRun
from shared.store.schedules import NewSchedule, Schedule

router = APIRouter(responses=ERROR_RESPONSES)

User = Annotated[str, Depends(current_user)]
ScheduleIdPath = Annotated[
    str, Path(json_schema_extra={"format": "uuid", "pattern": RUN_ID_PATTERN})
]
TICK_CURSOR_PATTERN = r"^[0-9]{1,16}$"
TICK_CURSOR = re.compile(TICK_CURSOR_PATTERN)
# The fields of a schedule that make its runs: checked as the `SubmitRun` they make.
RUN_FIELDS = ("input", "agent", "params", "thread_id", "metadata")


class CreateSchedule(BaseModel):
    """`POST /schedules`: a cadence and the run each of its ticks makes (as `POST /runs`
    takes it, less its per-request options)."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description="5 fields (minute hour day month weekday), 6 with seconds first, "
        "or @hourly/@daily/@weekly/@monthly/@yearly",
    )
    timezone: str = Field(
        min_length=1, max_length=MAX_ZONE_CHARS, description="an IANA zone, e.g. UTC"
    )
    input: str = Field(min_length=1, json_schema_extra={"pattern": NONBLANK_PATTERN})
    agent: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    thread_id: str | None = Field(default=None, json_schema_extra={"pattern": THREAD_ID_PATTERN})
    metadata: dict[str, Any] = Field(default_factory=dict)


class SchedulePublic(BaseModel):
    schedule_id: str
    cron: str
    timezone: str
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    thread_id: str | None
    next_run_at: str
    last_run_at: str | None
    runs_made: int
    created_at: str
    url: str


class ScheduleList(BaseModel):
    schedules: list[SchedulePublic]
    next_cursor: str | None


class ScheduleRun(RunPublic):
    tick_at: str


class ScheduleRuns(BaseModel):
    schedule_id: str
    runs: list[ScheduleRun]
    next_cursor: str | None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.longrun
    return state


def parse_schedule_id(raw: str) -> str:
    if not RUN_ID.fullmatch(raw):
        raise ApiError(400, "invalid_schedule_id", "schedule ids are UUIDs")
    return raw.lower()


def checked_cadence(
    body: CreateSchedule, now: datetime, min_interval: float
) -> tuple[cron.Cron, datetime]:
    """The parsed cadence and its first tick after `now`; ApiError 422 when the expression or
    zone is invalid, or it ticks more often than `min_interval` seconds."""
    try:
        cadence = cron.parse(body.cron, body.timezone, now)
    except cron.BadCron as exc:
        code = "invalid_timezone" if str(exc).startswith("timezone") else "invalid_cron"
        raise ApiError(422, code, str(exc)) from None
    # Five fields tick at most once a minute: only a shorter bound, or seconds, needs a look.
    if cadence.seconds or min_interval > 60:
        gap = cadence.shortest_gap(now)
        if gap < timedelta(seconds=min_interval):
            raise ApiError(
                422,
                "schedule_too_frequent",
                f"ticks {gap.total_seconds():g} s apart; the shortest interval allowed is "
                f"{min_interval:g} s",
            )
    return cadence, cadence.after(now)


def checked_run(state: AppState, body: CreateSchedule) -> tuple[SubmitRun, str]:
    """The run template and its agent (absent: the default), checked exactly as `POST /runs`
    checks its body."""
    try:
        run = SubmitRun.model_validate(body.model_dump(include=set(RUN_FIELDS)))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise ApiError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}") from None
    return run, checked_agent(state, run)


def _view(request: Request, s: Schedule) -> dict[str, Any]:
    base = public_base(request.scope, _state(request).settings)
    return {**s.public(), "url": f"{base}/schedules/{s.schedule_id}"}


@router.post(
    "/schedules",
    status_code=201,
    response_model=None,
    responses={
        **documented(201, SchedulePublic, "the schedule, with Location"),
        409: {"description": "too_many_schedules: the user has the most schedules allowed"},
    },
)
async def create_schedule(body: CreateSchedule, request: Request, user: User) -> JSONResp:
    state = _state(request)
    s = state.settings
    run, agent = checked_run(state, body)
    _, first = checked_cadence(body, datetime.now(UTC), s.schedule_min_interval_seconds)
    who = principal_of(request, user)
    new = NewSchedule(
        cron=body.cron.strip(),
        timezone=body.timezone,
        next_tick_at=first,
        run=NewRun(
            user_id=user,
            agent=agent,
            input=run.input,
            params=run.params,
            metadata=run.metadata,
            thread_id=run.thread_id,
            key_id=who.key_id,
        ),
    )
    made = await state.store.schedules.create(new, max_per_user=s.max_schedules_per_user)
    return JSONResp(
        _view(request, made),
        status_code=201,
        headers={"Location": f"/schedules/{made.schedule_id}"},
    )


def _cursor(raw: str | None) -> tuple[datetime, str] | None:
    if raw is None:
        return None
    if not CURSOR.fullmatch(raw):
        raise ApiError(400, "invalid_cursor", "cursor must come from next_cursor")
    micros, _, sid = raw.partition("~")
    return EPOCH + timedelta(microseconds=int(micros)), sid.lower()


@router.get(
    "/schedules", response_model=None, responses=documented(200, ScheduleList, "the schedules")
)
async def list_schedules(
    request: Request,
    user: User,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": CURSOR_PATTERN})] = None,
) -> JSONResp:
    store = _state(request).store
    found = await store.schedules.list_schedules(user, limit=limit, before=_cursor(cursor))
    nxt = None
    if len(found) == limit:
        nxt = make_cursor(found[-1].created_at, found[-1].schedule_id)
    return JSONResp({"schedules": [_view(request, s) for s in found], "next_cursor": nxt})


async def _owned(state: AppState, raw_id: str, user: str) -> Schedule:
    found = await state.store.schedules.get(parse_schedule_id(raw_id), user)
    if found is None:
        raise NotFound("no such schedule")
    return found


@router.get(
    "/schedules/{schedule_id}",
    response_model=None,
    responses=documented(200, SchedulePublic, "the schedule"),
)
async def get_schedule(schedule_id: ScheduleIdPath, request: Request, user: User) -> JSONResp:
    return JSONResp(_view(request, await _owned(_state(request), schedule_id, user)))


@router.delete(
    "/schedules/{schedule_id}",
    status_code=204,
    response_model=None,
    responses={204: {"description": "deleted: it ticks no more (the runs it made stay)"}},
)
async def delete_schedule(schedule_id: ScheduleIdPath, request: Request, user: User) -> Response:
    sid = parse_schedule_id(schedule_id)
    if not await _state(request).store.schedules.delete(sid, user):
        raise NotFound("no such schedule")
    return Response(status_code=204)


@router.get(
    "/schedules/{schedule_id}/runs",
    response_model=None,
    responses=documented(200, ScheduleRuns, "the runs it made, newest tick first"),
)
async def schedule_runs(
    schedule_id: ScheduleIdPath,
    request: Request,
    user: User,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": TICK_CURSOR_PATTERN})] = None,
) -> JSONResp:
    state = _state(request)
    found = await _owned(state, schedule_id, user)
    before = None
    if cursor is not None:
        if not TICK_CURSOR.fullmatch(cursor):
            raise ApiError(400, "invalid_cursor", "cursor must come from next_cursor")
        before = EPOCH + timedelta(microseconds=int(cursor))
    made = await state.store.schedules.runs(found.schedule_id, user, limit=limit, before=before)
    nxt = None
    if len(made) == limit:
        nxt = str((made[-1][0] - EPOCH) // timedelta(microseconds=1))
    runs = [{**run.public(), "tick_at": tick.isoformat()} for tick, run in made]
    return JSONResp({"schedule_id": found.schedule_id, "runs": runs, "next_cursor": nxt})
