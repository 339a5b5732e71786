"""The runs resource: submit, poll, list, cancel, and the resumable event stream.

Submit is thin on purpose: validate, commit the row, then `XADD`, then 202. If Redis refuses
the entry the row is removed again and the answer is 503: nothing is left half-way.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import current_user
from api.errors import ApiError, JSONResp
from api.state import AppState
from api.streams import RunStream
from shared.agents import DEFAULT_AGENT
from shared.errors import NotFound, Unavailable
from shared.models import Run, RunStatus, parse_event_id
from shared.redisio import REDIS_DOWN
from shared.store import NewRun

router = APIRouter()
REDIS_OR_REPLY: tuple[type[BaseException], ...] = (*REDIS_DOWN, ResponseError)

User = Annotated[str, Depends(current_user)]
THREAD_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.longrun
    return state


def json_depth(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max((json_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((json_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


def check_json_field(name: str, value: dict[str, Any]) -> None:
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ApiError(422, "invalid_request", f"{name} is nested deeper than {MAX_JSON_DEPTH}")
    if len(orjson.dumps(value)) > MAX_JSON_BYTES:
        raise ApiError(422, "invalid_request", f"{name} exceeds {MAX_JSON_BYTES} bytes")


class SubmitRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1)
    agent: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    thread_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def parse_run_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(400, "invalid_run_id", "run ids are UUIDs") from None


def run_links(request: Request, run: Run) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    return {"url": f"{base}/runs/{run.run_id}", "events_url": f"{base}/runs/{run.run_id}/events"}


@router.post("/runs", status_code=202)
async def submit(body: SubmitRun, request: Request, user: User) -> JSONResp:
    state = _state(request)
    s = state.settings
    if len(body.input) > s.max_input_chars:
        raise ApiError(422, "input_too_long", f"input exceeds {s.max_input_chars} characters")
    agent = body.agent or DEFAULT_AGENT
    if agent not in state.agents:
        raise ApiError(
            422, "unknown_agent", f"no agent {agent!r}; known: {', '.join(sorted(state.agents))}"
        )
    if body.thread_id is not None and not THREAD_RE.match(body.thread_id):
        raise ApiError(422, "invalid_request", "thread_id: 1-128 of [A-Za-z0-9._:-]")
    check_json_field("params", body.params)
    check_json_field("metadata", body.metadata)
    run = await state.store.insert_run(
        NewRun(
            user_id=user,
            agent=agent,
            input=body.input,
            params=body.params,
            metadata=body.metadata,
            thread_id=body.thread_id,
        )
    )
    try:
        await state.rio.enqueue(run.run_id)
    except REDIS_DOWN as exc:
        await state.store.delete_queued_run(run.run_id)
        raise Unavailable("redis is unavailable: the run was not accepted") from exc
    links = run_links(request, run)
    return JSONResp(
        {
            "run_id": run.run_id,
            "status": "queued",
            "agent": agent,
            "thread_id": run.thread_id,
            "created_at": run.created_at.isoformat(),
            **links,
        },
        status_code=202,
        headers={"Location": f"/runs/{run.run_id}"},
    )


async def _owned_run(state: AppState, raw_id: str, user: str) -> Run:
    run = await state.store.get_run(parse_run_id(raw_id), user)
    if run is None:
        raise NotFound("no such run")
    return run


@router.get("/runs/{run_id}")
async def get_run(run_id: str, request: Request, user: User) -> JSONResp:
    run = await _owned_run(_state(request), run_id, user)
    return JSONResp({**run.public(), **run_links(request, run)})


def _cursor(raw: str | None) -> tuple[datetime, str] | None:
    if not raw:
        return None
    try:
        stamp, _, rid = raw.partition("~")
        return datetime.fromisoformat(stamp), str(uuid.UUID(rid))
    except ValueError:
        raise ApiError(400, "invalid_cursor", "cursor must come from next_cursor") from None


@router.get("/runs")
async def list_runs(
    request: Request,
    user: User,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: RunStatus | None = None,
    thread_id: str | None = None,
) -> JSONResp:
    runs = await _state(request).store.list_runs(
        user, limit=limit, before=_cursor(cursor), status=status, thread_id=thread_id
    )
    next_cursor = None
    if len(runs) == limit:
        last = runs[-1]
        next_cursor = f"{last.created_at.isoformat()}~{last.run_id}"
    return JSONResp({"runs": [r.public() for r in runs], "next_cursor": next_cursor})


@router.post("/runs/{run_id}/cancel", status_code=202)
async def cancel(run_id: str, request: Request, user: User) -> JSONResp:
    state = _state(request)
    run = await _owned_run(state, run_id, user)
    if run.status is RunStatus.QUEUED:
        done = await state.store.cancel_queued(run.run_id, user)
        if done is not None:
            await _publish_archived_terminal(state, done)
            return JSONResp({"run_id": run.run_id, "status": "cancelled"}, status_code=202)
        run = await _owned_run(state, run_id, user)
    if run.status is RunStatus.RUNNING:
        await state.store.request_cancel(run.run_id, user)
        try:
            await state.rio.request_cancel(run.run_id)
        except REDIS_DOWN as exc:
            raise Unavailable("redis is unavailable: retry the cancel") from exc
        return JSONResp({"run_id": run.run_id, "status": "cancelling"}, status_code=202)
    return JSONResp({"run_id": run.run_id, "status": str(run.status)}, status_code=202)


async def _publish_archived_terminal(state: AppState, run: Run) -> None:
    """Copy a terminal event the API committed (a queued run cancelled) into the run's Redis
    stream, so live followers see it at once. Best effort: the archive has it anyway."""
    events = await state.store.events_after(run.run_id, run.last_seq - 1, 1)
    if not events:
        return
    e = events[0]
    key = state.keys.events(run.run_id)
    try:
        await state.redis.xadd(key, {"t": e.type, "d": e.data}, id=f"0-{e.seq}")
        await state.redis.expire(key, state.settings.events_ttl_seconds)
    except REDIS_OR_REPLY:
        pass


async def _already_ended(state: AppState, run: Run, after: int) -> bool:
    """Whether the client has seen the terminal event. Postgres knows once the terminal state
    is committed; just before that, only the Redis stream has the terminal event."""
    if run.status.terminal:
        return after >= run.last_seq
    try:
        seen = await state.rio.events_after(run.run_id, after - 1, 1) if after > 0 else []
    except REDIS_DOWN:
        return False
    return bool(seen) and seen[0].seq == after and seen[0].terminal


@router.get("/runs/{run_id}/events", response_model=None)
async def events(
    run_id: str,
    request: Request,
    user: User,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> Response:
    state = _state(request)
    run = await _owned_run(state, run_id, user)
    try:
        after = parse_event_id(last_event_id_header or last_event_id)
    except ValueError as exc:
        raise ApiError(400, "invalid_last_event_id", str(exc)) from None
    if after is not None and await _already_ended(state, run, after):
        return Response(status_code=204)  # tells EventSource to stop reconnecting
    stream = RunStream(
        state.store, state.rio, state.hub, run.run_id, state.settings.sse_ping_seconds
    )

    async def frames() -> Any:
        async for event in stream.events(after or 0, run.status.terminal):
            if event is None:
                continue  # idle: sse-starlette's own pings keep the connection alive
            yield ServerSentEvent(data=event.data.decode(), event=event.type, id=event.id)

    return EventSourceResponse(
        frames(),
        ping=state.settings.sse_ping_seconds,
        send_timeout=30,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
