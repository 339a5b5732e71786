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
    async def insert_runs(self, news: Sequence[NewRun]) -> list[tuple[str, datetime]]:
        """Insert queued runs (no thread) in one statement, committed when it returns.
        Returns (run_id, created_at) per run, in the order given."""
        ids = [uuid.uuid4() for _ in news]
        async with self.conn() as c:
            rows = await c.fetch(
                """INSERT INTO runs (run_id, user_id, agent, input, params, metadata, status)
                   SELECT u.run_id, u.user_id, u.agent, u.input, u.params, u.metadata, 'queued'
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                               $6::jsonb[]) AS u(run_id, user_id, agent, input, params, metadata)
                   RETURNING run_id, created_at""",
                ids,
                [n.user_id for n in news],
                [n.agent for n in news],
                [n.input for n in news],
                [n.params for n in news],
                [n.metadata for n in news],
            )
        created: dict[Any, datetime] = {r["run_id"]: r["created_at"] for r in rows}
        return [(str(i), created[i]) for i in ids]

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
