"""What the API answers, as typed values: runs, submissions, pages, thread messages and the
events of a run's stream. Each keeps the JSON it was made from in `raw` (or `data` for an
event), so a field the server adds later is never lost to an older client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})


def _identity(d: dict[str, Any]) -> dict[str, Any]:
    """What a run and a submission both say of a run."""
    return {
        "run_id": d["run_id"],
        "status": d["status"],
        "agent": d.get("agent", ""),
        "thread_id": d.get("thread_id"),
        "created_at": d.get("created_at", ""),
    }


@dataclass(frozen=True)
class Run:
    """A run as `GET /runs/{id}` shows it (`url` and `events_url` are absent from list pages)."""

    run_id: str
    status: str
    agent: str
    thread_id: str | None
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    output: Any
    error: dict[str, Any] | None
    usage: dict[str, Any]
    cost_usd: float
    attempts: int
    last_seq: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    url: str | None
    events_url: str | None
    # A `waiting` run's pending question (`interrupt_id`, `payload`, `asked_at`, `deadline`),
    # and since when it waits; None otherwise.
    interrupt: dict[str, Any] | None
    waiting_since: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    start_at: str | None = None  # a delayed run: queued, not started, before this

    @property
    def done(self) -> bool:
        """Whether the run has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Run:
        return cls(
            **_identity(d),
            input=d.get("input", ""),
            params=d.get("params") or {},
            metadata=d.get("metadata") or {},
            output=d.get("output"),
            error=d.get("error"),
            usage=d.get("usage") or {},
            cost_usd=float(d.get("cost_usd") or 0.0),
            attempts=int(d.get("attempts") or 0),
            last_seq=int(d.get("last_seq") or 0),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
            updated_at=d.get("updated_at"),
            url=d.get("url"),
            events_url=d.get("events_url"),
            interrupt=d.get("interrupt"),
            waiting_since=d.get("waiting_since"),
            raw=d,
            start_at=d.get("start_at"),
        )


@dataclass(frozen=True)
class Submission:
    """The answer to `POST /runs` (202): the run is committed and queued."""

    run_id: str
    status: str
    agent: str
    thread_id: str | None
    created_at: str
    url: str
    events_url: str
    replayed: bool  # the run an Idempotency-Key already had
    raw: dict[str, Any] = field(repr=False, compare=False)
    start_at: str | None = None  # a delayed run's start

    @classmethod
    def from_json(cls, d: dict[str, Any], replayed: bool = False) -> Submission:
        return cls(
            **_identity(d),
            url=d.get("url", ""),
            events_url=d.get("events_url", ""),
            replayed=replayed,
            raw=d,
            start_at=d.get("start_at"),
        )


@dataclass(frozen=True)
class RunPage:
    runs: list[Run]
    next_cursor: str | None


@dataclass(frozen=True)
class Cancellation:
    """`cancelled` (a queued run, at once) or `cancelling` (a running one)."""

    run_id: str
    status: str


@dataclass(frozen=True)
class Resumption:
    """The answer to `POST /runs/{id}/resume` (202): the run is queued again, and the agent's
    `ctx.interrupt(...)` returns the value on its next attempt."""

    run_id: str
    interrupt_id: str
    status: str
    replayed: bool  # this interrupt had already been answered with the same value
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Message:
    seq: int
    run_id: str | None
    role: str
    content: Any
    created_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Message:
        return cls(
            seq=int(d["seq"]),
            run_id=d.get("run_id"),
            role=str(d.get("role", "")),
            content=d.get("content"),
            created_at=d.get("created_at"),
            raw=d,
        )


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event of a run's stream. `seq` counts 1, 2, 3, ... per run without gaps; `data` is
    the event's JSON as sent. Types this client does not know arrive as plain `Event`s."""

    seq: int
    type: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        """The SSE id: what `last_event_id` takes to resume after this event."""
        return str(self.seq)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True)
class StartEvent(Event):
    """The first event of a run's first attempt."""

    agent: str | None


@dataclass(frozen=True)
class TokenEvent(Event):
    """Text as the agent streams it (the ticker's "1", "2", ...)."""

    text: str


@dataclass(frozen=True)
class ToolStartEvent(Event):
    name: str
    args: Any
    call_id: str | None


@dataclass(frozen=True)
class ToolEndEvent(Event):
    """A tool call's end; `ok` false when it failed (the run goes on)."""

    call_id: str | None
    ok: bool


@dataclass(frozen=True)
class UsageEvent(Event):
    """A model turn's tokens and cost (`data` has them all)."""

    cost_usd: float | None


@dataclass(frozen=True)
class ResumedEvent(Event):
    """A later attempt took the run over (its events go on from here, none repeated)."""

    attempt: int | None


@dataclass(frozen=True)
class CodedEvent(Event):
    code: str | None
    message: str | None


@dataclass(frozen=True)
class NoticeEvent(CodedEvent):
    """Something the run went through: a provider retry, a model fallback."""


@dataclass(frozen=True)
class DoneEvent(Event):
    """The run succeeded (terminal)."""

    output: Any


@dataclass(frozen=True)
class ErrorEvent(CodedEvent):
    """The run failed (terminal): `code` says why (`agent_crashed`, `cost_budget_exceeded` ...)."""


@dataclass(frozen=True)
class CancelledEvent(Event):
    """The run was cancelled (terminal)."""


Make = Callable[[int, str, dict[str, Any]], Event]

TYPED: dict[str, Make] = {
    "start": lambda s, t, d: StartEvent(s, t, d, d.get("agent")),
    "token": lambda s, t, d: TokenEvent(s, t, d, str(d.get("text", ""))),
    "tool_start": lambda s, t, d: ToolStartEvent(
        s, t, d, str(d.get("name", "")), d.get("args"), d.get("call_id")
    ),
    "tool_end": lambda s, t, d: ToolEndEvent(s, t, d, d.get("call_id"), bool(d.get("ok"))),
    "usage": lambda s, t, d: UsageEvent(s, t, d, d.get("cost_usd")),
    "resumed": lambda s, t, d: ResumedEvent(s, t, d, d.get("attempt")),
    "notice": lambda s, t, d: NoticeEvent(s, t, d, d.get("code"), d.get("message")),
    "done": lambda s, t, d: DoneEvent(s, t, d, d.get("output")),
    "error": lambda s, t, d: ErrorEvent(s, t, d, d.get("code"), d.get("message")),
    "cancelled": CancelledEvent,
}


def parse_event(d: dict[str, Any]) -> Event:
    """The typed event for one event's JSON (which holds `seq` and `type`)."""
    seq, etype = int(d["seq"]), str(d["type"])
    return TYPED.get(etype, Event)(seq, etype, d)
