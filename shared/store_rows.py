"""Row shapes and SQL shared by the store's one-run and many-run statements: the run columns
and their model, the terminal status of each transition, and the thread-turn condition."""

from __future__ import annotations

import asyncpg

from shared.models import Run, Transition

RUN_COLUMNS = (
    "run_id, user_id, thread_id, agent, input, params, metadata, status, attempt, output, "
    "error, usage, cost_usd, last_seq, event_bytes, cancel_requested, created_at, started_at, "
    "finished_at, updated_at"
)


TARGETS = {
    Transition.SUCCEED: "succeeded",
    Transition.FAIL: "failed",
    Transition.CANCEL: "cancelled",
}


def run_of(record: asyncpg.Record) -> Run:
    data = dict(record)
    data["run_id"] = str(data["run_id"])
    return Run.model_validate(data)


# A run in a thread is claimed only when no earlier run of its thread is still queued (the
# partial unique index allows one running run per thread; this keeps their order).
THREAD_TURN = """NOT EXISTS (
    SELECT 1 FROM runs earlier
    WHERE runs.thread_id IS NOT NULL
      AND earlier.user_id = runs.user_id
      AND earlier.thread_id = runs.thread_id
      AND earlier.status = 'queued'
      AND (earlier.created_at, earlier.run_id) < (runs.created_at, runs.run_id))"""
