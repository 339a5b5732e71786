"""The body of a run's webhook: the Standard Webhooks envelope `{"type", "timestamp", "data"}`
with the event type (`run.succeeded`, `run.failed`, `run.cancelled`: `run.` and the terminal
status, as the statement that records the delivery writes it; `run.waiting` when the run
started waiting for a person), the time the run ended or started waiting, and the run as
`GET /runs/{id}` shows it (a waiting run with its pending `interrupt`; its `url` when
`LONGRUN_PUBLIC_URL` says where the API is; a stream token is never in it). Encoded once, at
the first attempt: every attempt of a message sends the same bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from shared.models import Run


def body(run: Run, event: str, public_url: str | None) -> bytes:
    data = run.public()
    if public_url is not None:
        data["url"] = f"{public_url}/runs/{run.run_id}"
    when = run.finished_at or run.waiting_since or run.updated_at or datetime.now(UTC)
    return orjson.dumps({"type": event, "timestamp": when.isoformat(), "data": data})
