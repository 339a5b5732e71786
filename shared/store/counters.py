"""The finished-run counters (`run_counters`): the runs ended, by terminal status, and the model
spend their terminal commits recorded. Every statement that commits a terminal state adds to
them itself (a CTE, no extra round trip), so they count exactly what was committed, a read
sums a few rows whatever the number of runs ever made, and deleting old runs takes nothing
from them.

Each writer adds to its own shard, picked by its Postgres backend (`pg_backend_pid()`): the
terminal commits of different connections (a worker's lanes, the API's pool) do not queue on
one row's lock. One statement locks its counter rows in status order, so two statements on the
same shard cannot deadlock over them.
"""

from __future__ import annotations

SHARDS = 256


def count_ended(ended: str) -> str:
    """The CTE `counted`: the runs of `ended` (a relation with the columns `status` and
    `cost_delta`, the spend the commit added to the run) added to this writer's shard."""
    return f"""counted AS (
        INSERT INTO run_counters AS c (shard, status, runs, cost_usd)
        SELECT pg_backend_pid() % {SHARDS}, status, count(*), sum(cost_delta)
        FROM {ended}
        GROUP BY status ORDER BY status
        ON CONFLICT (shard, status) DO UPDATE
        SET runs = c.runs + excluded.runs, cost_usd = c.cost_usd + excluded.cost_usd
    )"""


# The runs a fenced terminal commit ended: its `finished` CTE (the UPDATE's RETURNING run_id,
# status, cost_usd) against its `fence` CTE (run_id and the cost_usd before the commit). A run's
# spend is counted as it grows: a run re-run from the dead letters counts only what it added.
ENDED_UNDER_FENCE = """(SELECT finished.status,
            greatest(finished.cost_usd - fence.cost_usd, 0) AS cost_delta
        FROM finished JOIN fence USING (run_id)) AS ended"""

# The sums `/metrics` reads: at most SHARDS rows per terminal status.
READ_COUNTERS = (
    "SELECT status, sum(runs) AS runs, sum(cost_usd) AS cost_usd FROM run_counters GROUP BY status"
)
