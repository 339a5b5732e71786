"""Row shapes of the store and the conversions of asyncpg records into them: what the
repositories take (`NewRun`, `Finishing`) and give back (`Run`, `Event`, `Submitted`,
`ApiKey`, `ActiveKey`, `RunFigures`, ...). Records become models here; no record leaves
`shared.store`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from shared.agents.base import Checkpoint
from shared.models import Event, QueuedRun, Run, Transition

RUN_COLUMNS = (
    "run_id, user_id, thread_id, agent, input, params, metadata, status, attempt, output, "
    "error, usage, cost_usd, last_seq, event_bytes, cancel_requested, created_at, started_at, "
    "finished_at, updated_at, interrupt, waiting_since, webhook_url, start_at, priority"
)

TARGETS = {
    Transition.SUCCEED: "succeeded",
    Transition.FAIL: "failed",
    Transition.CANCEL: "cancelled",
}


@dataclass(frozen=True)
class NewRun:
    user_id: str
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    thread_id: str | None = None
    # Where its terminal state and waits are POSTed (None: the key's default webhook, if any)
    # and the API key whose secret signs it (None: a JWT caller, who has none: no webhook).
    webhook: str | None = None
    key_id: str | None = None
    # Not runnable before this (a delayed start); None: at once.
    start_at: datetime | None = None
    priority: str = "normal"  # high, normal or low: its place in the queue


@dataclass(frozen=True)
class Finishing:
    """One run's terminal write (`RunRepo.finish`, `BatchRepo.finish_many`)."""

    run_id: str
    attempt: int
    move: Transition
    events: Sequence[Event]
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Asking:
    """An attempt's interrupt (`InterruptRepo.wait`): its last events (the `interrupt` event
    last) and the run's move to `waiting`, fenced on the attempt and the log's last seq."""

    run_id: str
    attempt: int
    interrupt_id: str
    key: str
    payload: Any
    timeout_seconds: float | None
    has_default: bool
    default: Any
    events: Sequence[Event]
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Submitted:
    """A submit's run: inserted now, or the run an Idempotency-Key already had (`replayed`)."""

    run_id: str
    status: str
    thread_id: str | None
    created_at: datetime
    replayed: bool
    start_at: datetime | None = None  # a delayed run's start


@dataclass(frozen=True)
class ActiveKey:
    """An unrevoked API key: the key id (public, loggable), its user, and whether it is an
    operator's (sees the whole deployment: the `/ops` endpoints)."""

    key_id: str
    user_id: str
    operator: bool = False
    max_priority: str = "normal"  # the highest priority its runs may ask for


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    user_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class RunFigures:
    """What operators see of the runs: the active ones by status (a gauge), the runs ended by
    terminal status and the model spend their terminal commits recorded (counters)."""

    active: dict[str, int] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    oldest_wait_seconds: float = 0.0  # the longest a waiting run has waited so far
    webhooks_pending: int = 0  # deliveries still to be made
    webhooks_failed_day: int = 0  # deliveries given up in the last 24 hours


def run_of(record: asyncpg.Record) -> Run:
    data = dict(record)
    data["run_id"] = str(data["run_id"])
    return Run.model_validate(data)


def scheduled_of(record: asyncpg.Record) -> tuple[QueuedRun, datetime]:
    """A delayed run's queue entry and its start (`run_id, user_id, priority, start_at`)."""
    queued = QueuedRun(str(record["run_id"]), record["user_id"], record["priority"])
    return queued, record["start_at"]


def event_of(record: asyncpg.Record) -> Event:
    return Event(seq=record["seq"], type=record["type"], data=bytes(record["data"]))


def checkpoint_of(record: asyncpg.Record) -> Checkpoint:
    return Checkpoint(step=record["step"], state=record["state"])


def api_key_of(record: asyncpg.Record) -> ApiKey:
    return ApiKey(**dict(record))


def active_key_of(record: asyncpg.Record) -> ActiveKey:
    return ActiveKey(
        record["key_id"], record["user_id"], bool(record["operator"]), record["max_priority"]
    )


def keyed_run_of(record: asyncpg.Record) -> tuple[bytes, Submitted]:
    """An Idempotency-Key's body digest and its run, as a replay."""
    run = Submitted(
        str(record["run_id"]),
        record["status"],
        record["thread_id"],
        record["created_at"],
        replayed=True,
        start_at=record["start_at"],
    )
    return bytes(record["body_hash"]), run


def thread_message_of(record: asyncpg.Record) -> dict[str, Any]:
    return {
        "seq": record["seq"],
        "run_id": str(record["run_id"]),
        "role": record["role"],
        "content": record["content"],
        "created_at": record["created_at"].isoformat(),
    }


def chat_message_of(record: asyncpg.Record) -> dict[str, Any]:
    return {"role": record["role"], "content": record["content"]}


def run_statuses_of(records: Iterable[asyncpg.Record]) -> dict[str, str]:
    return {str(r["run_id"]): str(r["status"]) for r in records}


def user_counts_of(records: Iterable[asyncpg.Record], users: Sequence[str]) -> dict[str, int]:
    """`n` per `user_id`; the users without a row are 0."""
    counts = dict.fromkeys(users, 0)
    counts.update({r["user_id"]: int(r["n"]) for r in records})
    return counts


def figures_of(
    counted: Iterable[asyncpg.Record],
    active: Iterable[asyncpg.Record],
    oldest_wait: float | None,
    webhooks: asyncpg.Record | None = None,
) -> RunFigures:
    """From the summed counters (`status, runs, cost_usd`), the active runs (`status, n`), the
    age in seconds of the oldest wait (None: no run waits) and the webhook deliveries
    (`pending, failed_day`)."""
    counted = list(counted)
    return RunFigures(
        active={str(r["status"]): int(r["n"]) for r in active},
        finished={str(r["status"]): int(r["runs"]) for r in counted},
        cost_usd=float(sum(float(r["cost_usd"]) for r in counted)),
        oldest_wait_seconds=float(oldest_wait or 0.0),
        webhooks_pending=0 if webhooks is None else int(webhooks["pending"]),
        webhooks_failed_day=0 if webhooks is None else int(webhooks["failed_day"]),
    )
