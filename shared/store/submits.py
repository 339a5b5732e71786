"""The submit transaction (`POST /runs`): idempotency and the per-user in-flight cap, decided in
Postgres in the same transaction as the insert, so they hold across API processes and crashes;
and its grouped form (`api.submit.groups`), many runs inserted by one statement.

Why Postgres and not Redis `SET NX`: the key must point at a run that exists, and a run must
exist only with its key. In one transaction (a) a transaction-scoped advisory lock per user
serialises that user's submits (released at commit, so pooled connections are safe), (b) a live
key is looked up, (c) the user's queued + running runs are counted (the truth, even after a
crash: no counter to drift), (d) the run and its key are inserted, by one statement. The primary
key on (user_id, key) is the backstop: two racing submits with one key cannot both insert. A run
deleted because its queue entry could not be added takes its key with it (ON DELETE CASCADE).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from shared.errors import InFlightCapReached, KeyReused, Unavailable
from shared.store.pool import Database
from shared.store.rows import NewRun, Submitted, keyed_run_of, user_counts_of

# Submits in flight at once across every API process stay below this (each process holds at most
# `pg_pool_max` Postgres connections, 16 by default): while a user's count is this far below the
# cap, submits skip the per-user lock and still cannot overshoot it.
UNLOCKED_HEADROOM = 256

# Queued runs inserted in one statement, committed when it returns. A run with an
# Idempotency-Key (`key`, `body_hash`) is inserted with its key, or not at all when the key is
# live already. Foreign keys are checked at the statement's end, and a racing insert of the
# same key waits for this one and then finds the key taken. An expired key of the same name is
# replaced. A run without a webhook of its own takes its API key's default one (`key_id`: the
# key that submitted it, whose secret signs its webhooks). A run takes its key's retention
# (`retention_days`, NULL: the deployment's).
INSERT_RUNS = """WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[], $7::jsonb[], $8::text[], $9::bytea[], $11::text[],
                             $12::text[], $13::timestamptz[], $14::text[])
        AS u(run_id, user_id, thread_id, agent, input, params, metadata, key, body_hash,
             webhook, key_id, start_at, priority)
    ), hooked AS (
        SELECT input.*, coalesce(input.webhook, k.webhook_url) AS webhook_url,
               k.retention_days
        FROM input LEFT JOIN api_keys k ON k.key_id = input.key_id
    ), keyed AS (
        INSERT INTO idempotency_keys (user_id, key, body_hash, run_id, expires_at)
        SELECT user_id, key, body_hash, run_id,
               now() + make_interval(secs => $10)
        FROM input WHERE key IS NOT NULL
        ON CONFLICT (user_id, key) DO UPDATE
        SET body_hash = excluded.body_hash, run_id = excluded.run_id,
            created_at = now(), expires_at = excluded.expires_at
        WHERE idempotency_keys.expires_at <= now()
        RETURNING run_id
    )
    INSERT INTO runs (run_id, user_id, thread_id, agent, input, params, metadata, status,
                      webhook_url, webhook_key_id, start_at, retention_days, priority)
    SELECT run_id, user_id, thread_id, agent, input, params, metadata, 'queued',
           webhook_url, CASE WHEN webhook_url IS NULL THEN NULL ELSE key_id END, start_at,
           retention_days, priority
    FROM hooked
    WHERE key IS NULL OR run_id IN (SELECT run_id FROM keyed)
    RETURNING run_id, created_at"""

# A live key's run.
KEYED_RUN = """SELECT k.body_hash, r.run_id, r.status, r.thread_id, r.created_at, r.start_at
    FROM idempotency_keys k JOIN runs r ON r.run_id = k.run_id
    WHERE k.user_id = $1 AND k.key = $2 AND k.expires_at > now()"""

IN_FLIGHT = """SELECT user_id, count(*) AS n FROM runs
    WHERE user_id = ANY($1::text[]) AND status IN ('queued', 'running')
    GROUP BY user_id"""

SWEEP_KEYS = """DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))"""

LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

# Expired keys a keyed submit sweeps on its way (the grouped path sweeps more, less often).
SWEEP_PER_SUBMIT = 100


class _KeyTaken(Exception):
    """A live key appeared after the look-up (only possible if the lock was bypassed)."""


def _replay(found: tuple[bytes, Submitted] | None, digest: bytes) -> Submitted | None:
    if found is None:
        return None
    body_hash, run = found
    if body_hash != digest:
        raise KeyReused("this Idempotency-Key was used with a different request body")
    return run


async def _keyed_run(c: asyncpg.Connection, user: str, key: str, digest: bytes) -> Submitted | None:
    """A live key's run (a retry), None when unknown, KeyReused when the body differs."""
    row = await c.fetchrow(KEYED_RUN, user, key)
    return _replay(None if row is None else keyed_run_of(row), digest)


async def _in_flight(c: asyncpg.Connection, users: Sequence[str]) -> dict[str, int]:
    return user_counts_of(await c.fetch(IN_FLIGHT, list(users)), users)


async def _insert_runs(
    c: asyncpg.Connection,
    news: Sequence[NewRun],
    keys: Sequence[tuple[str, bytes] | None] | None,
    key_ttl_seconds: float,
) -> list[tuple[str, datetime] | None]:
    ids = [uuid.uuid4() for _ in news]
    keys = keys or [None] * len(news)
    rows = await c.fetch(
        INSERT_RUNS,
        ids,
        [n.user_id for n in news],
        [n.thread_id for n in news],
        [n.agent for n in news],
        [n.input for n in news],
        [n.params for n in news],
        [n.metadata for n in news],
        [k[0] if k else None for k in keys],
        [k[1] if k else None for k in keys],
        float(key_ttl_seconds),
        [n.webhook for n in news],
        [n.key_id for n in news],
        [n.start_at for n in news],
        [n.priority for n in news],
    )
    created: dict[Any, datetime] = {r["run_id"]: r["created_at"] for r in rows}
    return [(str(i), created[i]) if i in created else None for i in ids]


async def insert_queued(c: asyncpg.Connection, news: Sequence[NewRun]) -> list[str]:
    """Queued runs without Idempotency-Keys inserted by `INSERT_RUNS` on `c` (within the
    caller's transaction: a schedule's tick, `shared.store.schedules`); their ids, in order."""
    inserted = await _insert_runs(c, news, None, 0)
    return [i[0] for i in inserted if i is not None]


def _fresh(new: NewRun, inserted: tuple[str, datetime] | None) -> Submitted:
    if inserted is None:
        raise _KeyTaken
    run_id, created_at = inserted
    return Submitted(
        run_id, "queued", new.thread_id, created_at, replayed=False, start_at=new.start_at
    )


class SubmitRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(self, user: str, key: str, digest: bytes) -> Submitted | None:
        """A live key's run (a retry), None when unknown, KeyReused when the body differs."""
        async with self.db.conn() as c:
            return await _keyed_run(c, user, key, digest)

    async def insert_run(
        self,
        new: NewRun,
        *,
        max_in_flight: int,
        key: str | None = None,
        digest: bytes = b"",
        key_ttl_seconds: int = 0,
    ) -> Submitted:
        """Insert a queued run unless the user is at the cap (InFlightCapReached) or the key is
        live already (its run is returned, replayed=True; KeyReused when the body differs).
        When another submit won the key meanwhile, that submit's run."""
        try:
            return await self._insert_run(new, max_in_flight, key, digest, key_ttl_seconds)
        except _KeyTaken:
            assert key is not None
            replay = await self.lookup(new.user_id, key, digest)
            if replay is None:  # the winner's run vanished again (its enqueue failed): rare
                raise Unavailable("a concurrent submit with this key failed: retry") from None
            return replay

    async def _insert_run(
        self, new: NewRun, max_in_flight: int, key: str | None, digest: bytes, ttl: int
    ) -> Submitted:
        user = new.user_id
        async with self.db.conn() as c:
            in_flight = None if key is not None else (await _in_flight(c, [user]))[user]
            if in_flight is not None and in_flight + UNLOCKED_HEADROOM < max_in_flight:
                # Far from the cap, concurrent submits cannot push the user past it: no lock
                # (a per-user lock serialised every submit of a user: ~350/s in bench/).
                (inserted,) = await _insert_runs(c, [new], None, 0)
                return _fresh(new, inserted)
            async with c.transaction():
                await c.execute(LOCK_USER, f"longrun:submit:{user}")
                if key is not None and (replay := await _keyed_run(c, user, key, digest)):
                    return replay
                in_flight = (await _in_flight(c, [user]))[user]
                if in_flight >= max_in_flight:
                    raise InFlightCapReached(
                        f"{in_flight} runs queued or running (the cap is {max_in_flight}): "
                        "wait for some to finish"
                    )
                keys = None if key is None else [(key, digest)]
                (inserted,) = await _insert_runs(c, [new], keys, ttl)
                run = _fresh(new, inserted)  # the key taken meanwhile: rolled back
                if key is not None:
                    await c.execute(SWEEP_KEYS, SWEEP_PER_SUBMIT)
                return run

    async def insert_runs(
        self,
        news: Sequence[NewRun],
        keys: Sequence[tuple[str, bytes] | None] | None = None,
        key_ttl_seconds: float = 0.0,
    ) -> list[tuple[str, datetime] | None]:
        """Insert queued runs in one statement, committed when it returns (`INSERT_RUNS`).

        `keys` gives some runs an Idempotency-Key (the key, the body's digest), unique per
        (user, key) within the call. A run whose key is live already is not inserted: None in
        its place (the caller replays the key's run). Otherwise (run_id, created_at), in the
        order given."""
        async with self.db.conn() as c:
            return await _insert_runs(c, news, keys, key_ttl_seconds)

    async def sweep_expired_keys(self, limit: int = 1000) -> int:
        """Delete up to `limit` expired idempotency keys; how many went."""
        done = await self.db.execute(SWEEP_KEYS, limit)
        return int(done.split()[-1])

    async def in_flight_counts(self, users: Sequence[str]) -> dict[str, int]:
        """Queued + running runs per user (users with none are 0)."""
        async with self.db.conn() as c:
            return await _in_flight(c, users)

    async def delete_queued_runs(self, run_ids: Sequence[str]) -> None:
        """Undo inserts whose queue entries could not be added (those submits answer 503)."""
        await self.db.execute(
            """DELETE FROM runs WHERE run_id = ANY($1::uuid[])
               AND status = 'queued' AND attempt = 0""",
            [uuid.UUID(r) for r in run_ids],
        )
