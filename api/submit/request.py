"""What a `POST /runs` asks for, checked: the body (`SubmitRun`: FastAPI parses it for the route,
`model_validate_json` for the lane), its bounds, the agent and its params, the Idempotency-Key
and the digest of the normalised body the key is bound to. Pure: no I/O. Every refusal is an
`ApiError` (422), the same whichever adapter parsed the body.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Principal
from api.errors import ApiError
from api.schemas import NONBLANK_PATTERN, THREAD_ID_PATTERN, has_text, valid_thread_id
from api.state import AppState
from api.threads import ThreadMode
from shared.agents import DEFAULT_AGENT
from shared.agents.chat import params_problem as chat_params_problem
from shared.agents.ticker import params_problem as ticker_params_problem
from shared.config import Settings
from shared.models import PRIORITIES
from shared.store import NewRun
from shared.tools import tools_problem
from shared.webhooks.targets import MAX_URL_CHARS

Priority = Literal["high", "normal", "low"]
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")  # whole keys only: fullmatch
# Fields left out of an Idempotency-Key's digest when absent (added after keys existed).
OPTIONAL_IN_DIGEST = ("webhook", "start_after", "start_at")


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
    # Where the run's terminal state and its waits for a person are POSTed, signed (absent:
    # the API key's default webhook, if it has one). Checked by `api.submit.webhook`.
    webhook: str | None = Field(
        default=None, max_length=MAX_URL_CHARS, json_schema_extra={"format": "uri"}
    )
    # A delayed start (at most one of the two; neither: at once). The run is queued but not
    # runnable before then. `start_after`: seconds from now; `start_at`: an RFC 3339 time with
    # its offset. Either no further ahead than LONGRUN_MAX_START_DELAY_SECONDS.
    start_after: float | None = Field(default=None, gt=0, strict=True)
    start_at: str | None = Field(
        default=None, max_length=64, json_schema_extra={"format": "date-time"}
    )
    # Its place in the queue: higher first, a waiting lower one served after at most
    # LONGRUN_PRIORITY_STARVATION higher picks in a row. Up to the API key's maximum (403).
    priority: Priority = "normal"

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not has_text(value):
            raise ValueError("must hold something besides whitespace")
        return value


class SubmitStream(SubmitRun):
    """`POST /runs/stream`: a submit, and what the client closing its connection means."""

    # cancel: the run is cancelled (a user who closes the tab stops paying); continue: it runs
    # on, and the client resumes with GET /runs/{id}/events and Last-Event-ID.
    on_disconnect: Literal["cancel", "continue"] = "cancel"

    def submit(self) -> SubmitRun:
        """The submit alone, as `POST /runs` takes it: an Idempotency-Key binds the same body
        whichever endpoint it came through, so a retry of either finds the same run."""
        return SubmitRun.model_construct(**self.model_dump(exclude={"on_disconnect"}))


@dataclass(frozen=True)
class SubmitRequest:
    """A submit every check passed: the run to insert, for whom, and how."""

    who: Principal
    new: NewRun
    thread_mode: ThreadMode = "enqueue"
    # The Idempotency-Key and the digest of the body it is bound to, when the request has one.
    key: tuple[str, bytes] | None = None
    # POST /runs/stream: the SSE slot its answer needs, taken with the group's admission (the
    # same round trip) or, on the alone path, before anything else.
    slot: str | None = None


def validated(
    state: AppState, body: SubmitRun, who: Principal, idempotency_key: str | None
) -> SubmitRequest:
    """The request to submit; ApiError (422) for anything out of bounds, the body first."""
    agent = checked_agent(state, body)
    start = start_of(body, datetime.now(UTC), state.settings.max_start_delay_seconds)
    if start is not None and body.thread_id is not None:
        raise ApiError(422, "invalid_start", "a delayed start cannot be combined with thread_id")
    check_priority(body.priority, who.max_priority)
    key = idempotency_key_of(idempotency_key)
    new = NewRun(
        user_id=who.user,
        agent=agent,
        input=body.input,
        params=body.params,
        metadata=body.metadata,
        thread_id=body.thread_id,
        webhook=body.webhook,
        key_id=who.key_id,
        start_at=start,
        priority=body.priority,
    )
    keyed = None if key is None else (key, submit_digest(body, agent))
    return SubmitRequest(who, new, body.thread_mode, keyed)


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def parse_rfc3339(raw: str) -> datetime | None:
    """An RFC 3339 date-time with its offset (`2026-01-02T03:04:05Z`, `...+02:00`), aware;
    None for anything else (no offset, another ISO 8601 form, an impossible date)."""
    if not RFC3339.fullmatch(raw):
        return None
    text = raw.upper().replace(" ", "T")
    head, dot, tail = text.partition(".")
    if dot:  # Python keeps microseconds: a longer fraction is cut, not refused
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = f"{head}.{tail[: min(digits, 6)]}{tail[digits:]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def start_time(
    start_after: float | None, start_at: str | None, now: datetime, max_delay: float
) -> datetime | None:
    """When a submitted run may start: None for at once; ApiError (422 `invalid_start`) for
    both given, a malformed time, one not after `now` or more than `max_delay` seconds ahead.
    Pure: `now` is a value (aware)."""
    if start_after is not None and start_at is not None:
        raise ApiError(422, "invalid_start", "give start_after or start_at, not both")
    if start_after is not None:
        if not start_after <= max_delay:
            raise ApiError(
                422, "invalid_start", f"start_after: at most {max_delay:g} seconds ahead"
            )
        return now + timedelta(seconds=start_after)
    if start_at is None:
        return None
    at = parse_rfc3339(start_at)
    if at is None:
        raise ApiError(
            422,
            "invalid_start",
            "start_at: an RFC 3339 date-time with an offset, e.g. 2030-01-02T03:04:05Z",
        )
    if at <= now:
        raise ApiError(422, "invalid_start", "start_at is not in the future")
    if (at - now).total_seconds() > max_delay:
        raise ApiError(422, "invalid_start", f"start_at: at most {max_delay:g} seconds ahead")
    return at


def start_of(body: SubmitRun, now: datetime, max_delay: float) -> datetime | None:
    return start_time(body.start_after, body.start_at, now, max_delay)


def check_priority(asked: str, allowed: str) -> None:
    """403 `priority_not_allowed` for a priority above the key's maximum."""
    if PRIORITIES.index(asked) < PRIORITIES.index(allowed):
        raise ApiError(
            403,
            "priority_not_allowed",
            f"this key's runs may ask for priority {allowed} at most, not {asked}",
        )


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


def check_json_field(name: str, value: Any, max_depth: int, max_bytes: int) -> None:
    """Any JSON value a client sends us to store (params, metadata, a resume's value)."""
    if not value:  # the usual metadata: nothing to walk or encode
        return
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


def _no_check(settings: Settings, params: dict[str, Any]) -> str | None:
    return None


# Built-in agents whose params can be checked before the run is accepted.
params_checks = {"chat": chat_params_problem, "ticker": ticker_params_problem}


def checked_agent(state: AppState, body: SubmitRun) -> str:
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


def idempotency_key_of(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(raw):
        raise ApiError(
            422, "invalid_idempotency_key", "Idempotency-Key: 1-255 printable ASCII characters"
        )
    return raw


def submit_digest(body: SubmitRun, agent: str) -> bytes:
    """What an Idempotency-Key is bound to: the normalised body, the agent resolved. A body
    without a webhook, a delayed start or a priority (or `normal`) normalises as it did before
    they existed (keys keep their digests)."""
    unset = {name for name in OPTIONAL_IN_DIGEST if not getattr(body, name)}
    if body.priority == "normal":
        unset.add("priority")
    normalised = {**body.model_dump(exclude=unset), "agent": agent}
    return hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).digest()
