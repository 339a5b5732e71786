"""What a `POST /runs` asks for, checked: the body (`SubmitRun`: FastAPI parses it for the route,
`model_validate_json` for the lane), its bounds, the agent and its params, the Idempotency-Key
and the digest of the normalised body the key is bound to. Pure: no I/O. Every refusal is an
`ApiError` (422), the same whichever adapter parsed the body.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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


def validated(
    state: AppState, body: SubmitRun, who: Principal, idempotency_key: str | None
) -> SubmitRequest:
    """The request to submit; ApiError (422) for anything out of bounds, the body first."""
    agent = checked_agent(state, body)
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
        priority=body.priority,
    )
    keyed = None if key is None else (key, submit_digest(body, agent))
    return SubmitRequest(who, new, body.thread_mode, keyed)


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
    without a webhook or a priority (or `normal`) normalises as it did before they existed
    (keys keep their digests)."""
    unset = set()
    if not body.webhook:
        unset.add("webhook")
    if body.priority == "normal":
        unset.add("priority")
    normalised = {**body.model_dump(exclude=unset or None), "agent": agent}
    return hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).digest()
