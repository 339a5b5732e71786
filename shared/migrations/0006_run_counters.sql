-- Finished-run counters for `/metrics`: the runs ended by terminal status and the model spend
-- their terminal commits recorded, added to by the statement that commits each terminal state
-- (shared/store/counters.py). A scrape sums at most a few hundred rows, whatever the number of
-- runs ever made, and deleting old runs takes nothing from the counters. Each writer adds to
-- its own shard (its backend), so concurrent commits do not wait on one row's lock.
CREATE TABLE run_counters (
    shard     smallint NOT NULL,
    status    text NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    runs      bigint NOT NULL,
    cost_usd  double precision NOT NULL,
    PRIMARY KEY (shard, status)
);

-- The runs that ended before the counters existed, counted once, in shard 0.
INSERT INTO run_counters (shard, status, runs, cost_usd)
SELECT 0, status, count(*), coalesce(sum(cost_usd), 0) FROM runs
WHERE status IN ('succeeded', 'failed', 'cancelled')
GROUP BY status;
