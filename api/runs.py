"""The runs resource: submit, poll, list, cancel, and the resumable event stream.

Submit is thin on purpose: validate, admit (kill switch, backlog, rate: `api.admission`),
commit the row (idempotency and the in-flight cap: `store.submits`), then `XADD`, then 202. If
Redis refuses the entry the row is removed again and the answer is 503: nothing is left
half-way.

Isolation: every look-up of a run is one query by (run id, user), so another user's run and a
run that does not exist take the same path and give the same 404, byte for byte.

The event stream is in `api.events`.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import Scope

from api.admission import IN_FLIGHT_RETRY_AFTER
from api.auth import (
    Principal,
    Security,
    current_user,
    principal_of,
    security,
    submit_principal,
)
from api.errors import ERROR_RESPONSES, ApiError, ErrorBody, JSONResp, redis_failure
from api.links import location, public_base, run_url
from api.schemas import (
    CURSOR,
    CURSOR_PATTERN,
    NONBLANK_PATTERN,
    RUN_ID,
    RUN_ID_PATTERN,
    THREAD_ID_PATTERN,
    CancelAnswer,
    EventsUrl,
    RunList,
    RunView,
    SubmitAnswer,
    documented,
    has_text,
    valid_thread_id,
)
from api.state import AppState
from api.submit import IDEMPOTENCY_KEY_RE, body_hash
from api.submit_batch import Fallback, NeedsLock, StaleKey, Ticket
from api.threads import ThreadMode, apply_thread_mode
from shared.agents import DEFAULT_AGENT
from shared.agents.chat import params_problem as chat_params_problem
from shared.agents.ticker import params_problem as ticker_params_problem
from shared.config import Settings
from shared.errors import InFlightCapReached, KeyReused, NotFound, Unavailable
from shared.models import Run, RunStatus
from shared.redis.client import REDIS_DOWN, REDIS_ERRORS
from shared.store import NewRun, Submitted
from shared.tools import tools_problem

router = APIRouter(responses=ERROR_RESPONSES)

User = Annotated[str, Depends(current_user)]


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.longrun
    return state


def json_depth(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max((json_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((json_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


def check_text(name: str, value: str) -> None:
    """Postgres text holds no NUL, and UTF-8 holds no lone surrogate: refuse both here."""
    if "\x00" in value:
        raise ApiError(422, "invalid_request", f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, "invalid_request", f"{name} is not valid Unicode") from None


def check_json_field(name: str, value: dict[str, Any], max_depth: int, max_bytes: int) -> None:
    if json_depth(value) > max_depth:
        raise ApiError(422, "invalid_request", f"{name} is nested deeper than {max_depth}")
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # integers past 64 bits, lone surrogates
        raise ApiError(422, "invalid_request", f"{name} holds a value JSON cannot store") from None
    if len(encoded) > max_bytes:
        raise ApiError(422, "invalid_request", f"{name} exceeds {max_bytes} bytes")
    if b"\\u0000" in encoded:  # Postgres jsonb refuses NUL characters
        raise ApiError(422, "invalid_request", f"{name} contains a NUL character")


class SubmitRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Whitespace alone is no input: the run would only fail `bad_input` later.
    input: str = Field(min_length=1, json_schema_extra={"pattern": NONBLANK_PATTERN})
    agent: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    thread_id: str | None = Field(default=None, json_schema_extra={"pattern": THREAD_ID_PATTERN})
    # What to do when the thread is busy: run after (enqueue), 409 (reject), or cancel the
    # running run first (interrupt).
    thread_mode: ThreadMode = "enqueue"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not has_text(value):
            raise ValueError("must hold something besides whitespace")
        return value


# How a route takes a run id: declared a UUID in the schema, checked by `parse_run_id` (400).
RunIdPath = Annotated[str, Path(json_schema_extra={"format": "uuid", "pattern": RUN_ID_PATTERN})]


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


def _no_check(settings: Settings, params: dict[str, Any]) -> str | None:
    return None


# Built-in agents whose params can be checked before the run is accepted.
params_checks = {"chat": chat_params_problem, "ticker": ticker_params_problem}


def validate_submit(state: AppState, body: SubmitRun) -> str:
    """The agent to run; ApiError for anything out of bounds."""
    s = state.settings
    if len(body.input) > s.max_input_chars:
        raise ApiError(422, "input_too_long", f"input exceeds {s.max_input_chars} characters")
    agent = body.agent or DEFAULT_AGENT
    if agent not in state.agents:
        raise ApiError(
            422, "unknown_agent", f"no such agent; known: {', '.join(sorted(state.agents))}"
        )
    if body.thread_id is not None and not valid_thread_id(body.thread_id):
        raise ApiError(422, "invalid_request", "thread_id: 1-128 of [A-Za-z0-9._:-]")
    check_text("input", body.input)
    check_json_field("params", body.params, s.max_json_depth, s.max_json_bytes)
    check_json_field("metadata", body.metadata, s.max_json_depth, s.max_json_bytes)
    problem = params_checks.get(agent, _no_check)(s, body.params)
    problem = problem or tools_problem(state.tools, body.params)
    if problem is not None:
        raise ApiError(422, "bad_params", problem)
    return agent


def submit_digest(body: SubmitRun, agent: str) -> bytes:
    """What an Idempotency-Key is bound to: the normalised body, the agent resolved."""
    return body_hash({**body.model_dump(), "agent": agent})


def _idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(raw):
        raise ApiError(
            422, "invalid_idempotency_key", "Idempotency-Key: 1-255 printable ASCII characters"
        )
    return raw


def accepted(request: Request, user: str, agent: str, sub: Submitted) -> JSONResp:
    links = run_links(request.scope, security(request), sub.run_id, principal_of(request, user))
    headers = {"Location": location(links["url"])}
    if sub.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResp(
        {
            "run_id": sub.run_id,
            "status": sub.status,
            "agent": agent,
            "thread_id": sub.thread_id,
            "created_at": sub.created_at.isoformat(),
            **links,
        },
        status_code=202,
        headers=headers,
    )


async def _admit(sec: Security, user: str) -> None:
    try:
        refusal = await sec.admission.check_submit(user)
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, "redis is unavailable: the run was not accepted") from exc
    if refusal is not None:
        raise ApiError(
            refusal.status, refusal.code, refusal.detail, {"Retry-After": str(refusal.retry_after)}
        )


@router.post(
    "/runs",
    status_code=202,
    response_model=None,
    responses=documented(202, SubmitAnswer, "accepted (or an idempotent replay)"),
)
async def submit(
    body: SubmitRun,
    request: Request,
    who: Annotated[Principal, Depends(submit_principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResp:
    state, sec = _state(request), security(request)
    agent = validate_submit(state, body)
    key = _idempotency_key(idempotency_key)
    user = who.user
    new = NewRun(
        user_id=user,
        agent=agent,
        input=body.input,
        params=body.params,
        metadata=body.metadata,
        thread_id=body.thread_id,
    )
    # What the submit lane already tried (api/submit_lane.py): the group, or admission.
    admitted = bool(request.scope.get("longrun.admitted"))
    grouped = admitted or bool(request.scope.get("longrun.grouped"))
    if body.thread_id is None and state.submits is not None and not grouped:
        # The common case goes with every concurrent submit in one group (`api.submit_batch`).
        keyed = None if key is None else (key, submit_digest(body, agent))
        try:
            sub = await state.submits.submit(Ticket(new, who.epoch, keyed))
            return accepted(request, user, agent, sub)
        except StaleKey:  # a key was revoked since this one's look-up was cached: check again
            sec.key_cache.clear()
            await current_user(request)  # 401 when it was this key
        except NeedsLock:  # near the in-flight cap: admitted already, the exact count decides
            admitted = True
        except Fallback:
            pass
    elif who.epoch is not None:
        await current_user(request)  # confirms the cached look-up against the epoch (or 401)
    return await _submit_alone(request, state, sec, new, key, body, admitted)


async def _submit_alone(
    request: Request,
    state: AppState,
    sec: Security,
    new: NewRun,
    key: str | None,
    body: SubmitRun,
    admitted: bool,
) -> JSONResp:
    """One submit on its own: idempotency keys, threads, and the locked in-flight count."""
    user, agent = new.user_id, new.agent
    digest = submit_digest(body, agent) if key is not None else b""
    try:
        if key is not None and (replay := await state.store.submits.lookup(user, key, digest)):
            return accepted(request, user, agent, replay)  # a retry: no admission needed
        if not admitted:
            await _admit(sec, user)
        if body.thread_id is not None:
            await apply_thread_mode(state, user, body.thread_id, body.thread_mode)
        sub = await state.store.submits.insert_run(
            new,
            max_in_flight=state.settings.max_runs_in_flight_per_user,
            key=key,
            digest=digest,
            key_ttl_seconds=state.settings.idempotency_ttl_seconds,
        )
    except KeyReused as exc:
        raise ApiError(422, exc.code, exc.detail) from None
    except InFlightCapReached as exc:
        raise ApiError(
            429, exc.code, exc.detail, {"Retry-After": str(IN_FLIGHT_RETRY_AFTER)}
        ) from None
    if sub.replayed:
        return accepted(request, user, agent, sub)
    try:
        await state.rio.enqueue(sub.run_id)
    except REDIS_ERRORS as exc:
        await state.store.submits.delete_queued_runs([sub.run_id])
        raise redis_failure(exc, "redis is unavailable: the run was not accepted") from exc
    return accepted(request, user, agent, sub)


async def _owned_run(state: AppState, raw_id: str, user: str) -> Run:
    run = await state.store.runs.get_run(parse_run_id(raw_id), user)
    if run is None:
        raise NotFound("no such run")
    return run


@router.get("/runs/{run_id}", response_model=None, responses=documented(200, RunView, "the run"))
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


@router.get("/runs", response_model=None, responses=documented(200, RunList, "the runs"))
async def list_runs(
    request: Request,
    user: User,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(json_schema_extra={"pattern": CURSOR_PATTERN})] = None,
    status: RunStatus | None = None,
    thread_id: Annotated[str | None, Query(pattern=THREAD_ID_PATTERN)] = None,
) -> JSONResp:
    runs = await _state(request).store.runs.list_runs(
        user, limit=limit, before=_cursor(cursor), status=status, thread_id=thread_id
    )
    next_cursor = None
    if len(runs) == limit:
        last = runs[-1]
        next_cursor = make_cursor(last.created_at, last.run_id)
    return JSONResp({"runs": [r.public() for r in runs], "next_cursor": next_cursor})


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=None,
    responses={
        **documented(202, CancelAnswer, "cancelled (a queued run) or cancelling (a running one)"),
        409: {"model": ErrorBody, "description": "already_finished: the run had ended"},
    },
)
async def cancel(run_id: RunIdPath, request: Request, user: User) -> JSONResp:
    state = _state(request)
    run = await _owned_run(state, run_id, user)
    if run.status is RunStatus.QUEUED:
        done = await state.store.runs.cancel_queued(run.run_id, user)
        if done is not None:
            await _publish_archived_terminal(state, done)
            return JSONResp({"run_id": run.run_id, "status": "cancelled"}, status_code=202)
        run = await _owned_run(state, run_id, user)
    if run.status is RunStatus.RUNNING:
        await state.store.runs.request_cancel(run.run_id, user)
        try:
            await state.rio.request_cancel(run.run_id)
        except REDIS_DOWN as exc:
            raise Unavailable("redis is unavailable: retry the cancel") from exc
        return JSONResp({"run_id": run.run_id, "status": "cancelling"}, status_code=202)
    # Ended already (perhaps just now): nothing was cancelled, and a 202 would say otherwise.
    raise ApiError(409, "already_finished", f"the run has already finished: {run.status}")


async def _publish_archived_terminal(state: AppState, run: Run) -> None:
    """Copy a terminal event the API committed (a queued run cancelled) into the run's Redis
    stream through the append script (which closes the run's log there), so live followers
    see it at once. Best effort: the archive has it anyway."""
    events = await state.store.runs.events_after(run.run_id, run.last_seq - 1, 1)
    if not events:
        return
    with contextlib.suppress(*REDIS_ERRORS):
        await state.rio.publish_terminal(run.run_id, events[0])
