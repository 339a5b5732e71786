"""The runs resource: poll, list, cancel, and the links of a run's answers. (A waiting run's
resume is `api.interrupts`.)

Submit (`POST /runs`) is its own package, `api.submit`: one pipeline behind the FastAPI route
and the lean lane. The event stream is in `api.events`.

Isolation: every look-up of a run is one query by (run id, user), so another user's run and a
run that does not exist take the same path and give the same 404, byte for byte.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import Scope

from api.auth import Principal, Security, current_user, principal_of, security
from api.errors import ERROR_RESPONSES, ApiError, ErrorBody, JSONResp
from api.links import public_base, run_url
from api.schemas import (
    AGENT_NAME_PATTERN,
    CURSOR,
    CURSOR_PATTERN,
    RUN_ID,
    RUN_ID_PATTERN,
    THREAD_ID_PATTERN,
    CancelAnswer,
    EventsUrl,
    RunList,
    RunView,
    documented,
)
from api.state import AppState
from shared.errors import NotFound, Unavailable
from shared.models import Run, RunStatus
from shared.redis.client import REDIS_DOWN, REDIS_ERRORS

router = APIRouter(responses=ERROR_RESPONSES)

User = Annotated[str, Depends(current_user)]


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.longrun
    return state


# How a route takes a run id: declared a UUID in the schema, checked by `parse_run_id` (400).
RunIdPath = Annotated[str, Path(json_schema_extra={"format": "uuid", "pattern": RUN_ID_PATTERN})]


class RunSegment(Convertor[str]):
    """`/runs/{run_id:run}`: any segment but the names of the collection's own resources
    (`/runs/stream`, `/runs/wait`), so a wrong method there is a 405 naming the right one
    (`Allow`), not a malformed run id's 400."""

    regex = "(?!(?:stream|wait)$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("run", RunSegment())


def parse_run_id(raw: str) -> str:
    if not RUN_ID.fullmatch(raw):
        raise ApiError(400, "invalid_run_id", "run ids are UUIDs")
    return raw.lower()


def events_url(request: Request, sec: Security, run_id: str, user: str) -> tuple[str, int]:
    """A fresh `events_url` for this run and user, and its expiry (unix seconds)."""
    who = principal_of(request, user)
    return events_url_at(public_base(request.scope, sec.settings), sec, run_id, who)


def events_url_at(base: str, sec: Security, run_id: str, who: Principal) -> tuple[str, int]:
    """The token is bound to the run, the user, and the key that minted it (`api.tokens`)."""
    token, expires_at = sec.stream_token(run_id, who, time.time())
    return f"{run_url(base, run_id)}/events?token={token}", expires_at


def run_links(scope: Scope, sec: Security, run_id: str, who: Principal) -> dict[str, str]:
    """The `url` and `events_url` of a run's answers (`api.links` says where they point), the
    stream token minted by `who`."""
    base = public_base(scope, sec.settings)
    url, _ = events_url_at(base, sec, run_id, who)
    return {"url": run_url(base, run_id), "events_url": url}


async def _owned_run(state: AppState, raw_id: str, user: str) -> Run:
    run = await state.store.runs.get_run(parse_run_id(raw_id), user)
    if run is None:
        raise NotFound("no such run")
    return run


@router.get(
    "/runs/{run_id:run}", response_model=None, responses=documented(200, RunView, "the run")
)
async def get_run(run_id: RunIdPath, request: Request, user: User) -> JSONResp:
    run = await _owned_run(_state(request), run_id, user)
    who = principal_of(request, user)
    return JSONResp(
        {**run.public(), **run_links(request.scope, security(request), run.run_id, who)}
    )


@router.get(
    "/runs/{run_id}/events_url",
    response_model=None,
    responses=documented(200, EventsUrl, "a fresh events_url"),
)
async def get_events_url(run_id: RunIdPath, request: Request, user: User) -> JSONResp:
    """A fresh `events_url` (the way back for a page whose stream token expired)."""
    run = await _owned_run(_state(request), run_id, user)
    url, expires_at = events_url(request, security(request), run.run_id, user)
    return JSONResp({"run_id": run.run_id, "events_url": url, "expires_at": expires_at})


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Reads of a run a cancel takes before it gives up on a run that keeps changing state.
CANCEL_TRIES = 3


def make_cursor(created_at: datetime, run_id: str) -> str:
    micros = (created_at - EPOCH) // timedelta(microseconds=1)
    return f"{micros}~{run_id}"


def _cursor(raw: str | None) -> tuple[datetime, str] | None:
    if raw is None:
        return None
    if not CURSOR.fullmatch(raw):
        raise ApiError(400, "invalid_cursor", "cursor must come from next_cursor")
    micros, _, rid = raw.partition("~")
    return EPOCH + timedelta(microseconds=int(micros)), rid.lower()


@dataclass(frozen=True)
class RunFilter:
    """One page of a runs list, as `GET /runs` and the operators' `GET /ops/runs` take it."""

    limit: int
    before: tuple[datetime, str] | None
    status: RunStatus | None
    thread_id: str | None
    agent: str | None


def run_filter(
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": CURSOR_PATTERN})] = None,
    status: RunStatus | None = None,
    thread_id: Annotated[str | None, Query(pattern=THREAD_ID_PATTERN)] = None,
    agent: Annotated[str | None, Query(pattern=AGENT_NAME_PATTERN)] = None,
) -> RunFilter:
    return RunFilter(limit, _cursor(cursor), status, thread_id, agent)


Filter = Annotated[RunFilter, Depends(run_filter)]


@router.get("/runs", response_model=None, responses=documented(200, RunList, "the runs"))
async def list_runs(request: Request, user: User, page: Filter) -> JSONResp:
    runs = await _state(request).store.runs.list_runs(user, **vars(page))
    return JSONResp(
        {"runs": [r.public() for r in runs], "next_cursor": next_cursor(runs, page.limit)}
    )


def next_cursor(runs: list[Run], limit: int) -> str | None:
    """The cursor of the page after `runs` (None when this page was the last)."""
    if len(runs) < limit:
        return None
    return make_cursor(runs[-1].created_at, runs[-1].run_id)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=None,
    responses={
        **documented(
            202, CancelAnswer, "cancelled (a queued or waiting run) or cancelling (a running one)"
        ),
        409: {"model": ErrorBody, "description": "already_finished: the run had ended"},
    },
)
async def cancel(run_id: RunIdPath, request: Request, user: User) -> JSONResp:
    state = _state(request)
    rid = parse_run_id(run_id)
    status = await cancel_run(state, rid, user)
    return JSONResp({"run_id": rid, "status": status}, status_code=202)


async def cancel_run(state: AppState, run_id: str, user: str) -> str:
    """Cancel one of `user`'s runs: "cancelled" (a queued or waiting run, ended here) or
    "cancelling" (a running one: its worker ends it within about a second, usage so far kept).
    The one cancel path, for `POST /runs/{id}/cancel` and a stream whose client left
    (`api.submit.stream`). NotFound for a run not the user's; ApiError 409 `already_finished`
    for an ended one."""
    run = await _owned_run(state, run_id, user)
    # A run may move between the read and the write (a running run starting to wait, a queued
    # one being claimed): each write is conditional, and a miss reads the run again.
    for _ in range(CANCEL_TRIES):
        if run.status in (RunStatus.QUEUED, RunStatus.WAITING):
            done = await state.store.runs.cancel_queued(run.run_id, user)
            if done is not None:
                if done.start_at is not None:
                    await forget_delayed(state, done.run_id)
                await publish_archived_terminal(state, done)
                if run.status is RunStatus.WAITING:
                    await next_of_thread(state, done)
                return "cancelled"
        elif run.status is RunStatus.RUNNING:
            if await state.store.runs.request_cancel(run.run_id, user) is not None:
                try:
                    await state.rio.request_cancel(run.run_id)
                except REDIS_DOWN as exc:
                    raise Unavailable("redis is unavailable: retry the cancel") from exc
                return "cancelling"
        else:
            # Ended already (perhaps just now): nothing was cancelled, and a 202 would say
            # otherwise.
            raise ApiError(409, "already_finished", f"the run has already finished: {run.status}")
        run = await _owned_run(state, run_id, user)
    raise Unavailable("the run kept changing state: retry the cancel")


async def forget_delayed(state: AppState, run_id: str) -> None:
    """A delayed run cancelled: out of the delayed set. Best effort: one left there is
    promoted in time and its claim, of a cancelled run, does nothing."""
    with contextlib.suppress(*REDIS_ERRORS):
        await state.rio.delayed.remove(run_id)


async def next_of_thread(state: AppState, run: Run) -> None:
    """A waiting run ended without a worker (cancelled): its thread's next run, which waited
    for its turn, is queued now (else the reconciler finds it). Best effort."""
    if run.thread_id is None:
        return
    nxt = await state.store.runs.next_in_thread(run.run_id)
    if nxt is not None:
        with contextlib.suppress(*REDIS_ERRORS):
            for item in await state.store.runs.queue_items([nxt]):
                await state.rio.enqueue(item)


async def publish_archived_terminal(state: AppState, run: Run) -> None:
    """Copy a terminal event the API committed (a queued run cancelled) into the run's Redis
    stream through the append script (which closes the run's log there), so live followers
    see it at once. Best effort: the archive has it anyway."""
    events = await state.store.runs.events_after(run.run_id, run.last_seq - 1, 1)
    if not events:
        return
    with contextlib.suppress(*REDIS_ERRORS):
        await state.rio.publish_terminal(run.run_id, events[0])
