"""The submit transaction: idempotency and the per-user in-flight cap, decided in Postgres in
the same transaction as the insert, so they hold across API processes and crashes.

Why Postgres and not Redis `SET NX`: the key must point at a run that exists, and a run must
exist only with its key. In one transaction (a) a transaction-scoped advisory lock per user
serialises that user's submits (released at commit, so pooled connections are safe), (b) a live
key is looked up, (c) the user's queued + running runs are counted (the truth, even after a
crash: no counter to drift), (d) the run and its key are inserted. The primary key on
(user_id, key) is the backstop: two racing submits with one key cannot both insert. A run
deleted because its queue entry could not be added takes its key with it (ON DELETE CASCADE).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.errors import LongrunError, Unavailable
from shared.store import NewRun, Store

IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")  # whole keys only: fullmatch


class KeyReused(LongrunError):
    """The Idempotency-Key was used with a different body."""

    code = "idempotency_key_reused"


class InFlightCapReached(LongrunError):
    code = "too_many_runs_in_flight"


@dataclass(frozen=True)
class Submitted:
    run_id: str
    status: str
    thread_id: str | None
    created_at: datetime
    replayed: bool


def body_hash(normalised: dict[str, Any]) -> bytes:
    return hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).digest()


def _submitted(row: asyncpg.Record, replayed: bool) -> Submitted:
    return Submitted(
        str(row["run_id"]), row["status"], row["thread_id"], row["created_at"], replayed
    )


async def lookup(store: Store, user: str, key: str, digest: bytes) -> Submitted | None:
    """A live key's run (a retry), None when unknown, KeyReused when the body differs."""
    async with store.conn() as c:
        row = await c.fetchrow(
            """SELECT k.body_hash, r.run_id, r.status, r.thread_id, r.created_at
               FROM idempotency_keys k JOIN runs r ON r.run_id = k.run_id
               WHERE k.user_id = $1 AND k.key = $2 AND k.expires_at > now()""",
            user,
            key,
        )
    return _replay(row, digest)


def _replay(row: asyncpg.Record | None, digest: bytes) -> Submitted | None:
    if row is None:
        return None
    if bytes(row["body_hash"]) != digest:
        raise KeyReused("this Idempotency-Key was used with a different request body")
    return _submitted(row, replayed=True)


# Submits in flight at once across every API process stay below this (each process holds at most
# `pg_pool_max` Postgres connections, 16 by default): while a user's count is this far below the
# cap, submits skip the per-user lock and still cannot overshoot it.
UNLOCKED_HEADROOM = 256


async def _in_flight(c: asyncpg.Connection, user_id: str) -> int:
    count: int = await c.fetchval(
        "SELECT count(*) FROM runs WHERE user_id = $1 AND status IN ('queued', 'running')",
        user_id,
    )
    return count


async def insert_run(
    store: Store,
    new: NewRun,
    *,
    max_in_flight: int,
    key: str | None = None,
    digest: bytes = b"",
    key_ttl_seconds: int = 0,
) -> Submitted:
    """Insert a queued run unless the user is at the cap (InFlightCapReached) or the key is
    live already (its run is returned, replayed=True; KeyReused when the body differs)."""
    if key is None:
        async with store.conn() as c:
            in_flight = await _in_flight(c, new.user_id)
        if in_flight + UNLOCKED_HEADROOM < max_in_flight:
            # Far from the cap, concurrent submits cannot push the user past it: no lock
            # (a per-user lock serialised every submit of a user: ~350/s in bench/).
            run = await store.insert_run(new)
            return Submitted(run.run_id, str(run.status), run.thread_id, run.created_at, False)
    async with store.conn() as c, c.transaction():
        await c.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"longrun:submit:{new.user_id}"
        )
        if key is not None:
            row = await c.fetchrow(
                """SELECT k.body_hash, r.run_id, r.status, r.thread_id, r.created_at
                   FROM idempotency_keys k JOIN runs r ON r.run_id = k.run_id
                   WHERE k.user_id = $1 AND k.key = $2 AND k.expires_at > now()""",
                new.user_id,
                key,
            )
            replay = _replay(row, digest)
            if replay is not None:
                return replay
        in_flight = await _in_flight(c, new.user_id)
        if in_flight >= max_in_flight:
            raise InFlightCapReached(
                f"{in_flight} runs queued or running (the cap is {max_in_flight}): "
                "wait for some to finish"
            )
        run = await store.insert_run(new, conn=c)
        stored = key is None or await _insert_key(
            c, new.user_id, key, digest, uuid.UUID(run.run_id), key_ttl_seconds
        )
        if not stored:
            # A live key appeared after our look-up (only possible if the lock was bypassed):
            # roll this run back and answer with the key's run instead.
            raise _KeyTaken
    return Submitted(run.run_id, str(run.status), run.thread_id, run.created_at, False)


class _KeyTaken(Exception):
    pass


async def submit_once(
    store: Store,
    new: NewRun,
    *,
    max_in_flight: int,
    key: str | None = None,
    digest: bytes = b"",
    key_ttl_seconds: int = 0,
) -> Submitted:
    """`insert_run`, and when another submit won the key meanwhile, that submit's run."""
    try:
        return await insert_run(
            store,
            new,
            max_in_flight=max_in_flight,
            key=key,
            digest=digest,
            key_ttl_seconds=key_ttl_seconds,
        )
    except _KeyTaken:
        assert key is not None
        replay = await lookup(store, new.user_id, key, digest)
        if replay is None:  # the winner's run vanished again (its enqueue failed): rare
            raise Unavailable("a concurrent submit with this key failed: retry") from None
        return replay


async def _insert_key(
    c: asyncpg.Connection, user: str, key: str, digest: bytes, run_id: uuid.UUID, ttl: int
) -> bool:
    """False when a live key of that name exists (the unique key refused ours)."""
    # An expired key of the same name is replaced; a few other expired keys are swept.
    stored = await c.fetchval(
        """INSERT INTO idempotency_keys (user_id, key, body_hash, run_id, expires_at)
           VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
           ON CONFLICT (user_id, key) DO UPDATE
           SET body_hash = excluded.body_hash, run_id = excluded.run_id,
               created_at = now(), expires_at = excluded.expires_at
           WHERE idempotency_keys.expires_at <= now()
           RETURNING true""",
        user,
        key,
        digest,
        run_id,
        float(ttl),
    )
    await c.execute(
        """DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT 100))"""
    )
    return bool(stored)
