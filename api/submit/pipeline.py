"""The one `POST /runs` flow, whichever adapter parsed the request (`api.submit.route`, the
FastAPI route, or `api.submit.lane`, the raw-ASGI lane): validate, admit, commit (grouped or
alone), enqueue, and a typed outcome that `api.submit.render` turns into the answer.

    validated ─> first_step ─ GROUP ─> groups.submit ─> Submitted ──────────────────> Accepted
        │            │                       │ Detour ─> after_group ─┐
        │            └─ Alone ───────────────┴────────────────────────┤
        │                                                             ▼
        │    _alone: confirm a cached key ─> a live key's run (replayed, no admission) ─> Accepted
        │            ─> admit ─> thread mode ─> insert (locked near the cap) ─> enqueue ─> Accepted
        ▼
    any refusal on the way (ApiError, or a LongrunError mapped by `api.errors`) ─> Refused

A body with a webhook has it checked between `validated` and `first_step`
(`api.submit.webhook`: the target resolved, the key able to sign), before anything is written.

Where a submit goes is decided here and only here, by pure functions: `first_step` (a thread's
submit and a process without groups go alone, everything else with its group) and
`after_group` (what each `Detour` out of a group must do on the alone path).

Errors that are not refusals (a bug, an unexpected Postgres error) propagate: the app's
handlers answer them (`api.errors`), as for any route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from api.admission import IN_FLIGHT_RETRY_AFTER
from api.auth import Principal, Security
from api.errors import ApiError, as_api_error, redis_failure
from api.state import AppState
from api.submit.enqueue import DOWN, enqueue
from api.submit.groups import Detour
from api.submit.request import SubmitRequest, SubmitRun, validated
from api.submit.webhook import check_webhook
from api.threads import apply_thread_mode
from shared.errors import InFlightCapReached, KeyReused, LongrunError
from shared.models import QueuedRun
from shared.redis.client import REDIS_ERRORS
from shared.store import Submitted

# Authenticates the request's caller from scratch (Postgres for an API key whose cached
# look-up is stale): `api.auth.current_user` on the request. An ApiError (401) refuses.
Authenticate = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Accepted:
    """202: the run is committed and queued, or (`run.replayed`) the run an Idempotency-Key
    already had."""

    who: Principal
    agent: str
    run: Submitted


@dataclass(frozen=True)
class Refused:
    error: ApiError


Outcome = Accepted | Refused


@dataclass(frozen=True)
class Grouped:
    """With every concurrent submit, in one group (`api.submit.groups`)."""


@dataclass(frozen=True)
class Alone:
    """On its own, and what it must do first."""

    # Confirm the caller with `Authenticate`: a cached key look-up no group confirmed.
    confirm_key: bool = False
    # A key was revoked since some look-ups were cached: forget them all before confirming.
    forget_cached_keys: bool = False
    # Its rate token is taken already (the group admitted it).
    admitted: bool = False


GROUP = Grouped()
Step = Grouped | Alone


def first_step(req: SubmitRequest, grouping: bool) -> Step:
    """A submit without a thread goes with its group; a thread's (whose mode acts first) goes
    alone, as does every submit when the process does not group."""
    if grouping and req.new.thread_id is None:
        return GROUP
    return Alone(confirm_key=req.who.epoch is not None)


AFTER_GROUP: dict[Detour, Alone] = {
    Detour.STALE_KEY: Alone(confirm_key=True, forget_cached_keys=True),
    Detour.NEAR_CAP: Alone(admitted=True),
    Detour.ALONE: Alone(),
}


def after_group(detour: Detour) -> Alone:
    return AFTER_GROUP[detour]


def refusal_of(exc: LongrunError) -> ApiError:
    """The answer to a submit refused on the way (`api.errors` maps the rest)."""
    if isinstance(exc, KeyReused):
        return ApiError(422, exc.code, exc.detail)
    if isinstance(exc, InFlightCapReached):
        return ApiError(429, exc.code, exc.detail, {"Retry-After": str(IN_FLIGHT_RETRY_AFTER)})
    return as_api_error(exc)


async def submit(
    state: AppState,
    sec: Security,
    body: SubmitRun,
    who: Principal,
    idempotency_key: str | None,
    authenticate: Authenticate,
    slot: str | None = None,
) -> Outcome:
    """A parsed `POST /runs`, from its checks to its outcome. With `slot` (POST /runs/stream:
    an SSE slot's id), the user's slot is taken first: with the group's admission, in its
    round trip, or alone before anything else; 429 `too_many_streams` refuses. The caller
    gives the slot back unless the outcome is Accepted."""
    try:
        req = validated(state, body, who, idempotency_key)
        if body.webhook is not None:
            await check_webhook(state, who, body.webhook)
        groups = state.submits
        step = first_step(req, grouping=groups is not None)
        if isinstance(step, Grouped):
            assert groups is not None
            got = await groups.submit(replace(req, slot=slot))
            if isinstance(got, Submitted):
                return Accepted(who, req.new.agent, got)
            step = after_group(got)  # (its slot taken with the group's admission)
        elif slot is not None:
            await sec.admission.stream_slot(who.user, slot)
        return Accepted(who, req.new.agent, await _alone(state, sec, req, step, authenticate))
    except LongrunError as exc:
        return Refused(refusal_of(exc))


async def _alone(
    state: AppState, sec: Security, req: SubmitRequest, step: Alone, authenticate: Authenticate
) -> Submitted:
    """One submit on its own: a key's replay, admission, the thread's mode, the insert under
    the in-flight cap (counted exactly, under the user's lock, near it), the queue entry."""
    if step.forget_cached_keys:
        sec.key_cache.clear()
    if step.confirm_key:
        await authenticate()
    new = req.new
    key, digest = req.key or (None, b"")
    if key is not None and (replay := await state.store.submits.lookup(new.user_id, key, digest)):
        return replay  # a retry: no admission needed
    if not step.admitted:
        await _admit(sec, new.user_id)
    if new.thread_id is not None:
        await apply_thread_mode(state, new.user_id, new.thread_id, req.thread_mode)
    sub = await state.store.submits.insert_run(
        new,
        max_in_flight=state.settings.max_runs_in_flight_per_user,
        key=key,
        digest=digest,
        key_ttl_seconds=state.settings.idempotency_ttl_seconds,
    )
    if not sub.replayed:
        queued = QueuedRun(sub.run_id, new.user_id, new.priority)
        (failure,) = await enqueue(state.store, state.rio, [(queued, new.start_at)])
        if failure is not None:
            raise failure
    return sub


async def _admit(sec: Security, user: str) -> None:
    try:
        refusal = await sec.admission.check_submit(user)
    except REDIS_ERRORS as exc:
        raise redis_failure(exc, DOWN) from exc
    if refusal is not None:
        raise refusal.as_error()
