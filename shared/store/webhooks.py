"""Webhook rows: the delivery every terminal commit of a run with a webhook records, and its
move to waiting for a person (a CTE of the statement that commits the state, `deliveries_of`:
no state without its delivery, no delivery without its state), the workers' claims of due
deliveries (`FOR UPDATE SKIP LOCKED`: workers never wait on each other's rows), each attempt's
record, a redelivery, the owner's listing, and the rotation of a key's signing secret.

A claim is a lease: it starts the attempt (`sending`, numbered) and moves the delivery's next
attempt past the attempt's time limit, so a delivery whose worker died is claimed again then.
An attempt's outcome moves the delivery only while no later attempt was claimed (the fence is
the attempt's number), except a success, which always ends it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.models import Run
from shared.store.pool import Database
from shared.store.rows import RUN_COLUMNS, run_of
from shared.webhooks.schedule import State

# A Standard Webhooks message id, made by Postgres in the statement that records it.
NEW_MESSAGE_ID = "'msg_' || replace(gen_random_uuid()::text, '-', '')"
NEW_ATTEMPT_ID = "'att_' || replace(gen_random_uuid()::text, '-', '')"


def deliveries_of(ended: str, snapshot: bool = False) -> str:
    """The CTE `hooked`: a pending delivery for each run of `ended` (a relation with `run_id`,
    `status` and `webhook_url`, the UPDATE's RETURNING) that has a webhook. Its event type is
    `run.<status>`. `snapshot`: `ended` also has `snapshot`, the run's whole row, which the
    delivery keeps (a waiting run moves on before its body is rendered; a terminal one does
    not)."""
    kept = "snapshot" if snapshot else "NULL::jsonb"
    return f"""hooked AS (
        INSERT INTO webhook_deliveries (delivery_id, run_id, event_type, run_snapshot)
        SELECT {NEW_MESSAGE_ID}, run_id, 'run.' || status, {kept} FROM {ended}
        WHERE webhook_url IS NOT NULL
    )"""


# Due deliveries, claimed: each gets its next attempt started and leased. The run it tells of
# is the row the delivery kept (`run.waiting`), else the run's current row.
CLAIM_DUE = f"""WITH due AS (
        SELECT delivery_id FROM webhook_deliveries
        WHERE state = 'pending' AND next_at <= now()
        ORDER BY next_at LIMIT $1
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_deliveries d SET attempts = d.attempts + 1,
            schedule_attempts = d.schedule_attempts + 1,
            next_at = now() + make_interval(secs => $2), updated_at = now()
        FROM due WHERE d.delivery_id = due.delivery_id
        RETURNING d.delivery_id, d.run_id, d.event_type, d.attempts, d.schedule_attempts,
            d.schedule_from, d.payload, d.run_snapshot
    ), started AS (
        INSERT INTO webhook_attempts (attempt_id, delivery_id, n)
        SELECT {NEW_ATTEMPT_ID}, delivery_id, attempts FROM claimed
        RETURNING attempt_id, delivery_id
    )
    SELECT c.delivery_id, c.event_type, c.attempts, c.schedule_attempts,
        extract(epoch FROM now() - c.schedule_from)::float8 AS elapsed, c.payload,
        s.attempt_id, k.webhook_secret, k.webhook_secret_prev, k.webhook_secret_rotated_at,
        now() AS now, {", ".join(f"r.{c.strip()}" for c in RUN_COLUMNS.split(","))}
    FROM claimed c JOIN started s USING (delivery_id)
    JOIN runs live ON live.run_id = c.run_id
    CROSS JOIN LATERAL jsonb_populate_record(live, c.run_snapshot) r
    LEFT JOIN api_keys k ON k.key_id = live.webhook_key_id"""

# An attempt's outcome, and the delivery's next state (fenced: see the module docstring).
RECORD = """WITH att AS (
        UPDATE webhook_attempts SET status = $3, response_code = $4, latency_ms = $5,
            error = $6, finished_at = now()
        WHERE attempt_id = $2
    )
    UPDATE webhook_deliveries SET state = $7,
        next_at = CASE WHEN $8::float8 IS NULL THEN next_at
                       ELSE now() + make_interval(secs => $8) END,
        last_error = $6, updated_at = now()
    WHERE delivery_id = $1 AND state = 'pending' AND (attempts = $9 OR $7 = 'delivered')"""

# The run's latest delivery, due again now under a new schedule.
REDELIVER = """WITH latest AS (
        SELECT d.delivery_id FROM webhook_deliveries d JOIN runs r USING (run_id)
        WHERE d.run_id = $1 AND r.user_id = $2
        ORDER BY d.created_at DESC LIMIT 1
        FOR UPDATE OF d
    )
    UPDATE webhook_deliveries d SET state = 'pending', next_at = now(), schedule_from = now(),
        schedule_attempts = 0, last_error = NULL, updated_at = now()
    FROM latest WHERE d.delivery_id = latest.delivery_id
    RETURNING d.delivery_id"""

LIST = """SELECT d.delivery_id, d.event_type, d.state, d.attempts, d.next_at, d.created_at,
        d.last_error, a.attempt_id, a.n, a.status, a.response_code, a.latency_ms, a.error,
        a.started_at, a.finished_at
    FROM webhook_deliveries d JOIN runs r USING (run_id)
    LEFT JOIN LATERAL (
        SELECT * FROM webhook_attempts WHERE delivery_id = d.delivery_id
        ORDER BY n DESC LIMIT $3
    ) a ON true
    WHERE d.run_id = $1 AND r.user_id = $2
    ORDER BY d.created_at, a.n"""

# For `/metrics`, each through its partial index: what is still to be sent (it follows the
# backlog) and what was given up in the last day.
WEBHOOK_FIGURES = """SELECT
    (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending') AS pending,
    (SELECT count(*) FROM webhook_deliveries
     WHERE state = 'failed' AND updated_at > now() - interval '1 day') AS failed_day"""


@dataclass(frozen=True)
class Claimed:
    """One attempt to make: the delivery, the run it tells of, and the key's secrets."""

    delivery_id: str
    attempt_id: str
    event_type: str
    attempt: int  # the fence: this attempt's number among all of the delivery's
    schedule_attempt: int  # its number in the current schedule
    elapsed: float  # seconds since the current schedule began
    payload: bytes | None
    run: Run
    secret: str | None
    previous_secret: str | None
    rotated_at: datetime | None
    now: datetime  # Postgres' clock when claimed


@dataclass(frozen=True)
class Outcome:
    """What an attempt got: the answer's status code (None when no answer), its latency, and
    what went wrong when nothing did answer."""

    code: int | None
    latency_ms: float | None
    error: str | None


def claimed_of(record: asyncpg.Record) -> Claimed:
    data = dict(record)
    run = run_of({k: data[k] for k in (c.strip() for c in RUN_COLUMNS.split(","))})
    return Claimed(
        delivery_id=data["delivery_id"],
        attempt_id=data["attempt_id"],
        event_type=data["event_type"],
        attempt=data["attempts"],
        schedule_attempt=data["schedule_attempts"],
        elapsed=float(data["elapsed"]),
        payload=None if data["payload"] is None else bytes(data["payload"]),
        run=run,
        secret=data["webhook_secret"],
        previous_secret=data["webhook_secret_prev"],
        rotated_at=data["webhook_secret_rotated_at"],
        now=data["now"],
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def deliveries_view(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """The rows of `LIST` as the API shows them: each delivery with its attempts."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        d = out.get(r["delivery_id"])
        if d is None:
            d = out[r["delivery_id"]] = {
                "id": r["delivery_id"],
                "type": r["event_type"],
                "state": r["state"],
                "attempts_made": r["attempts"],
                "next_attempt_at": _iso(r["next_at"]) if r["state"] == "pending" else None,
                "created_at": _iso(r["created_at"]),
                "last_error": r["last_error"],
                "attempts": [],
            }
        if r["attempt_id"] is not None:
            d["attempts"].append(
                {
                    "id": r["attempt_id"],
                    "n": r["n"],
                    "status": r["status"],
                    "response_code": r["response_code"],
                    "latency_ms": r["latency_ms"],
                    "error": r["error"],
                    "started_at": _iso(r["started_at"]),
                    "finished_at": _iso(r["finished_at"]),
                }
            )
    return list(out.values())


class WebhookRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the workers ---------------------------------------------------------------------------
    async def claim_due(self, limit: int, lease_seconds: float) -> list[Claimed]:
        """Up to `limit` due deliveries, each with an attempt started and leased."""
        rows = await self.db.fetch(CLAIM_DUE, limit, lease_seconds)
        return [claimed_of(r) for r in rows]

    async def keep_payload(self, delivery_id: str, payload: bytes) -> bytes:
        """The delivery's body: `payload` unless an earlier attempt stored one already."""
        kept: bytes = await self.db.fetchval(
            "UPDATE webhook_deliveries SET payload = coalesce(payload, $2) "
            "WHERE delivery_id = $1 RETURNING payload",
            delivery_id,
            payload,
        )
        return bytes(kept) if kept is not None else payload

    async def record(
        self,
        c: Claimed,
        outcome: Outcome,
        state: State,
        delay: float | None,
        error: str | None = None,
    ) -> None:
        """The attempt's outcome and the delivery's next state (`delay`: when PENDING)."""
        delivered = outcome.code is not None and 200 <= outcome.code < 300
        await self.db.execute(
            RECORD,
            c.delivery_id,
            c.attempt_id,
            "succeeded" if delivered else "failed",
            outcome.code,
            outcome.latency_ms,
            error or outcome.error,
            str(state),
            delay,
            c.attempt,
        )

    # -- the owner -----------------------------------------------------------------------------
    async def deliveries(
        self, run_id: str, user_id: str, attempts_each: int = 100
    ) -> list[dict[str, Any]]:
        """The run's deliveries, oldest first, each with its newest `attempts_each` attempts
        (in order); empty for a run without any, or of another user."""
        rows = await self.db.fetch(LIST, uuid.UUID(run_id), user_id, attempts_each)
        return deliveries_view(list(rows))

    async def redeliver(self, run_id: str, user_id: str) -> str | None:
        """Make the run's latest delivery due now, under a new schedule; its id, or None when
        the run has none (no webhook, or not finished)."""
        found: str | None = await self.db.fetchval(REDELIVER, uuid.UUID(run_id), user_id)
        return found

    # -- the keys ------------------------------------------------------------------------------
    async def rotate_secret(self, key_id: str, secret: str) -> bool:
        """`secret` becomes the key's signing secret; the one it had signs too for a grace
        period (`shared.webhooks.signing`). False: no such active key."""
        done = await self.db.execute(
            """UPDATE api_keys SET webhook_secret_prev = webhook_secret,
                   webhook_secret_rotated_at = now(), webhook_secret = $2
               WHERE key_id = $1 AND revoked_at IS NULL""",
            key_id,
            secret,
        )
        return bool(done.endswith(" 1"))
