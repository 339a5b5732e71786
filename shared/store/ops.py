"""What operators do and read in Postgres: re-running a dead-lettered run (`longrun dlq retry`),
the statuses of the runs behind dead letters (`longrun dlq list`), and the run figures of
`/metrics` (bounded: the counters, the active and waiting runs through their partial indexes,
the webhook deliveries pending or given up lately through theirs)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from shared.models import Transition, sources
from shared.store.counters import READ_COUNTERS
from shared.store.pool import Database
from shared.store.rows import RunFigures, figures_of, run_statuses_of
from shared.store.runs import OF_RUN
from shared.store.webhooks import WEBHOOK_FIGURES

# The runs queued or running, by status: read through the partial index `runs_active`, so its
# cost follows the backlog, not the number of runs ever made.
ACTIVE_RUNS = """SELECT status, count(*) AS n FROM runs
    WHERE status IN ('queued', 'running') GROUP BY status
    UNION ALL SELECT 'waiting', count(*) FROM runs WHERE status = 'waiting'"""
# The oldest wait, through the partial index `runs_waiting`.
OLDEST_WAIT = """SELECT extract(epoch FROM now() - min(waiting_since))::float8 FROM runs
    WHERE status = 'waiting'"""


class OpsRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def run_statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        """run_id -> status of those that exist (ids that are not UUIDs are skipped)."""
        valid = []
        for rid in run_ids:
            try:
                valid.append(uuid.UUID(rid))
            except ValueError:
                continue
        rows = await self.db.fetch(
            "SELECT run_id, status FROM runs WHERE run_id = ANY($1::uuid[])", valid
        )
        return run_statuses_of(rows)

    async def retry_failed(self, run_id: str) -> bool:
        """failed -> queued in one transaction: withdraw the archived terminal `error` event,
        clear the outcome and the start time. False when the run is not failed (anymore).
        The finished-run counters keep its failure: it did fail."""
        try:
            rid = uuid.UUID(run_id)
        except ValueError:
            return False
        allowed = sorted(str(s) for s in sources(Transition.RETRY))
        async with self.db.conn() as c, c.transaction():
            last_seq = await c.fetchval(
                "SELECT last_seq FROM runs WHERE run_id = $1 AND status = ANY($2::text[]) "
                "FOR UPDATE",
                rid,
                allowed,
            )
            if last_seq is None:
                return False
            withdrawn = await c.execute(
                f"DELETE FROM run_events WHERE {OF_RUN} AND seq = $2 AND type = 'error'",
                rid,
                last_seq,
            )
            if withdrawn.endswith(" 1"):
                last_seq -= 1
            await c.execute(
                """UPDATE runs SET status = 'queued', output = NULL, error = NULL,
                       started_at = NULL, finished_at = NULL, updated_at = now(), last_seq = $2
                   WHERE run_id = $1""",
                rid,
                last_seq,
            )
        return True

    async def run_figures(self) -> RunFigures:
        """The runs for `/metrics`: two bounded reads, whatever the number of runs ever made."""
        async with self.db.conn() as c:
            counted = await c.fetch(READ_COUNTERS)
            active = await c.fetch(ACTIVE_RUNS)
            oldest = await c.fetchval(OLDEST_WAIT)
            webhooks = await c.fetchrow(WEBHOOK_FIGURES)
        return figures_of(counted, active, oldest, webhooks)
