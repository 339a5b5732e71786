"""Value objects that cross process boundaries: run status and its transition table, the run as
stored, and events as appended, archived and served.

Everything here is pure: no I/O. `transition()` is the single authority on which status changes
are legal; the store's compare-and-set writes use it to pick the `WHERE` clause.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # Paused on an interrupt (`ctx.interrupt`): checkpointed, no queue entry, no lease, no slot;
    # a resume (or the interrupt's deadline) moves it on.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})
TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class Transition(StrEnum):
    CLAIM = "claim"  # a worker starts (or re-starts) the run: attempt + 1
    REQUEUE = "requeue"  # handed over / reconciled: back to the queue, attempt kept
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    RETRY = "retry"  # an operator re-runs a dead-lettered run (`longrun dlq retry`)
    WAIT = "wait"  # the agent interrupted: the run waits for a person, released by its worker
    RESUME = "resume"  # the interrupt answered (or its deadline took the default): queued again


# (from, transition) -> to. Anything absent is illegal.
TRANSITIONS: dict[tuple[RunStatus, Transition], RunStatus] = {
    (RunStatus.QUEUED, Transition.CLAIM): RunStatus.RUNNING,
    (RunStatus.RUNNING, Transition.CLAIM): RunStatus.RUNNING,  # re-claimed after a lease expired
    (RunStatus.RUNNING, Transition.REQUEUE): RunStatus.QUEUED,
    (RunStatus.QUEUED, Transition.REQUEUE): RunStatus.QUEUED,
    (RunStatus.RUNNING, Transition.SUCCEED): RunStatus.SUCCEEDED,
    (RunStatus.RUNNING, Transition.FAIL): RunStatus.FAILED,
    (RunStatus.QUEUED, Transition.FAIL): RunStatus.FAILED,  # dead-lettered before it ran
    (RunStatus.RUNNING, Transition.CANCEL): RunStatus.CANCELLED,
    (RunStatus.QUEUED, Transition.CANCEL): RunStatus.CANCELLED,
    (RunStatus.FAILED, Transition.RETRY): RunStatus.QUEUED,
    (RunStatus.RUNNING, Transition.WAIT): RunStatus.WAITING,
    (RunStatus.WAITING, Transition.RESUME): RunStatus.QUEUED,
    (RunStatus.WAITING, Transition.CANCEL): RunStatus.CANCELLED,  # cancel, or thread `interrupt`
    (RunStatus.WAITING, Transition.FAIL): RunStatus.FAILED,  # its deadline passed, no default
}


class IllegalTransition(ValueError):
    pass


def transition(current: RunStatus, move: Transition) -> RunStatus:
    """The status after `move`, or IllegalTransition."""
    try:
        return TRANSITIONS[(current, move)]
    except KeyError:
        raise IllegalTransition(f"cannot {move} a {current} run") from None


def sources(move: Transition) -> frozenset[RunStatus]:
    """Statuses from which `move` is legal (the compare-and-set's allowed old values)."""
    return frozenset(frm for (frm, mv) in TRANSITIONS if mv == move)


# -- events ------------------------------------------------------------------------------------

TERMINAL_EVENT_TYPES = frozenset({"done", "error", "cancelled"})
EVENT_TYPES = frozenset(
    {"start", "token", "tool_start", "tool_end", "usage", "resumed", "notice", "interrupt"}
    | TERMINAL_EVENT_TYPES
)


@dataclass(frozen=True, eq=True)
class Event:
    """One appended event. `data` is the JSON object clients receive; it always holds `seq` and
    `type`. The SSE `id` is the decimal seq: the same whether read from Redis or Postgres.
    A plain dataclass: the hub makes one per event read and every subscriber shares it."""

    seq: int
    type: str
    data: bytes  # the encoded JSON object, exactly as served

    @property
    def id(self) -> str:
        return str(self.seq)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENT_TYPES

    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.data)
        return value

    @cached_property
    def frame(self) -> bytes:
        """The SSE frame, encoded once for every subscriber (the data is one JSON line)."""
        return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
            self.seq,
            self.type.encode(),
            self.data,
        )


def encode_event(seq: int, body: dict[str, Any]) -> Event:
    """Stamp `seq` onto an event body and encode it once; the bytes are then stored and served
    unchanged. Raises ValueError on a body without a known `type`."""
    etype = body.get("type")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:
        raise ValueError(f"unknown event type {etype!r}")
    data = orjson.dumps({"seq": seq, **{k: v for k, v in body.items() if k != "seq"}})
    return Event(seq=seq, type=etype, data=data)


def parse_event_id(raw: str | None) -> int | None:
    """`Last-Event-ID` as a seq: None when absent; ValueError when not a plain non-negative int."""
    if raw is None:
        return None
    text = raw.strip()
    if text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise ValueError("Last-Event-ID must be an event id previously sent by this stream")
    return int(text)


PRIORITIES = ("high", "normal", "low")  # highest first


@dataclass(frozen=True)
class QueuedRun:
    """What a queue entry carries: the run, whose it is (the fairness tenant) and its
    priority. `RedisIO.enqueue`/`enqueue_many` take these and nothing else."""

    run_id: str
    user_id: str
    priority: str = "normal"


class Run(BaseModel):
    """A run as stored in Postgres (the truth)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    user_id: str
    thread_id: str | None
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    status: RunStatus
    attempt: int
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] = {}
    cost_usd: float = 0.0
    last_seq: int = 0  # the last event Postgres holds (the log's end: see shared.store.events)
    event_bytes: int = 0  # bytes of the run's events so far (the per-run cap)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    cancel_requested: bool = False
    # The pending interrupt of a waiting run (`interrupt_id`, `payload`, `deadline`, ...).
    interrupt: dict[str, Any] | None = None
    waiting_since: datetime | None = None
    webhook_url: str | None = None  # where its terminal state and waits are POSTed (webhooks)
    start_at: datetime | None = None  # a delayed run is not runnable before this
    priority: str = "normal"  # high, normal or low: its place in the queue

    def public(self) -> dict[str, Any]:
        """The JSON clients see for `GET /runs/{id}`."""
        return {
            "run_id": self.run_id,
            "status": str(self.status),
            "agent": self.agent,
            "thread_id": self.thread_id,
            "input": self.input,
            "params": self.params,
            "metadata": self.metadata,
            "output": self.output,
            "error": self.error,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "attempts": self.attempt,
            "last_seq": self.last_seq,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(self.updated_at),
            "interrupt": self.interrupt,
            "waiting_since": _iso(self.waiting_since),
            "webhook": self.webhook_url,
            "start_at": _iso(self.start_at),
            "priority": self.priority,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
