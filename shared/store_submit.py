"""Postgres queries of the grouped submit path (`api.submit_batch`): many runs inserted in one
statement, in-flight counts of many users in one, and the undo of a group whose queue entries
could not be added."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.store_base import StoreBase

if TYPE_CHECKING:
    from shared.store import NewRun


class SubmitQueries(StoreBase):
    async def insert_runs(
        self,
        news: Sequence[NewRun],
        keys: Sequence[tuple[str, bytes] | None] | None = None,
        key_ttl_seconds: float = 0.0,
    ) -> list[tuple[str, datetime] | None]:
        """Insert queued runs (no thread) in one statement, committed when it returns.

        `keys` gives some runs an Idempotency-Key (the key, the body's digest), unique per
        (user, key) within the call. A run whose key is live already is not inserted: None in
        its place (the caller replays the key's run). Otherwise (run_id, created_at), in the
        order given. The runs and their keys are inserted by the same statement: foreign keys
        are checked at its end, and a racing insert of the same key waits for this one and then
        finds the key taken."""
        ids = [uuid.uuid4() for _ in news]
        keys = keys or [None] * len(news)
        async with self.conn() as c:
            rows = await c.fetch(
                """WITH input AS (
                       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
                                            $5::jsonb[], $6::jsonb[], $7::text[], $8::bytea[])
                       AS u(run_id, user_id, agent, input, params, metadata, key, body_hash)
                   ), keyed AS (
                       INSERT INTO idempotency_keys (user_id, key, body_hash, run_id, expires_at)
                       SELECT user_id, key, body_hash, run_id,
                              now() + make_interval(secs => $9)
                       FROM input WHERE key IS NOT NULL
                       ON CONFLICT (user_id, key) DO UPDATE
                       SET body_hash = excluded.body_hash, run_id = excluded.run_id,
                           created_at = now(), expires_at = excluded.expires_at
                       WHERE idempotency_keys.expires_at <= now()
                       RETURNING run_id
                   )
                   INSERT INTO runs (run_id, user_id, agent, input, params, metadata, status)
                   SELECT run_id, user_id, agent, input, params, metadata, 'queued' FROM input
                   WHERE key IS NULL OR run_id IN (SELECT run_id FROM keyed)
                   RETURNING run_id, created_at""",
                ids,
                [n.user_id for n in news],
                [n.agent for n in news],
                [n.input for n in news],
                [n.params for n in news],
                [n.metadata for n in news],
                [k[0] if k else None for k in keys],
                [k[1] if k else None for k in keys],
                float(key_ttl_seconds),
            )
        created: dict[Any, datetime] = {r["run_id"]: r["created_at"] for r in rows}
        return [(str(i), created[i]) if i in created else None for i in ids]

    async def sweep_expired_keys(self, limit: int = 1000) -> int:
        """Delete up to `limit` expired idempotency keys; how many went."""
        async with self.conn() as c:
            done = await c.execute(
                """DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
                       SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))""",
                limit,
            )
        return int(done.split()[-1])

    async def in_flight_counts(self, users: Sequence[str]) -> dict[str, int]:
        """Queued + running runs per user (users with none are 0)."""
        async with self.conn() as c:
            rows = await c.fetch(
                """SELECT user_id, count(*) AS n FROM runs
                   WHERE user_id = ANY($1::text[]) AND status IN ('queued', 'running')
                   GROUP BY user_id""",
                list(users),
            )
        counts = dict.fromkeys(users, 0)
        counts.update({r["user_id"]: int(r["n"]) for r in rows})
        return counts

    async def delete_queued_runs(self, run_ids: Sequence[str]) -> None:
        """Undo inserts whose queue entries could not be added (those submits answer 503)."""
        async with self.conn() as c:
            await c.execute(
                """DELETE FROM runs WHERE run_id = ANY($1::uuid[])
                   AND status = 'queued' AND attempt = 0""",
                [uuid.UUID(r) for r in run_ids],
            )
