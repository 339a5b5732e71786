-- Data that does not grow forever (issue 18): the event archive partitioned by time, and what
-- retention needs to find expired runs without scanning `runs`.
--
-- `run_events` becomes a table partitioned by RANGE on `run_created_at`, the run's own
-- `created_at` copied on each of its event rows: fixed for the life of a run, so a run's events
-- all live in one partition, and a partition holds exactly the events of the runs created in its
-- range (retention drops it once every one of them is past retention). The partition key must
-- be part of every unique index: the primary key is (run_id, seq, run_created_at), which is
-- unique exactly when (run_id, seq) is, since every row of a run carries the same
-- run_created_at. Partitions are created ahead by the workers' retention job
-- (shared/store/retention.py); the default partition takes any row no partition covers
-- (written while no job ran).
--
-- Existing rows are moved in this transaction (writes to the archive wait for it): 2 million
-- rows took 36 s on the benchmarks' 2-core machine under load (bench/RESULTS.md §10). A large
-- archive is better moved in a maintenance window, or emptied first (see docs/ARCHITECTURE.md).
ALTER TABLE run_events RENAME TO run_events_unpartitioned;
ALTER INDEX run_events_pkey RENAME TO run_events_unpartitioned_pkey;

CREATE TABLE run_events (
    run_id          uuid NOT NULL,
    run_created_at  timestamptz NOT NULL,   -- runs.created_at of the run: the partition key
    seq             integer NOT NULL,
    type            text NOT NULL,
    data            bytea NOT NULL,          -- the JSON object exactly as served
    PRIMARY KEY (run_id, seq, run_created_at)
) PARTITION BY RANGE (run_created_at);

CREATE TABLE run_events_default PARTITION OF run_events DEFAULT;

-- Weekly partitions (LONGRUN_EVENT_PARTITION_DAYS' default; weeks counted from 1970-01-01 UTC,
-- as the job counts them) from the oldest run's week to two weeks ahead, so that the existing
-- archive lands in partitions retention can drop, and the default partition starts empty.
DO $$
DECLARE
    week constant interval := interval '604800 seconds';
    lo timestamptz;
BEGIN
    SELECT 'epoch'::timestamptz + floor(extract(epoch FROM coalesce(min(created_at), now()))
                                        / 604800) * week
    INTO lo FROM runs;
    WHILE lo < now() + 2 * week LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF run_events FOR VALUES FROM (%L) TO (%L)',
                       'run_events_' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'), lo, lo + week);
        lo := lo + week;
    END LOOP;
END $$;

-- Events of runs that no longer exist (none should: nothing deleted runs with events) are left.
INSERT INTO run_events (run_id, run_created_at, seq, type, data)
SELECT e.run_id, r.created_at, e.seq, e.type, e.data
FROM run_events_unpartitioned e JOIN runs r USING (run_id);

DROP TABLE run_events_unpartitioned;

-- Retention per API key: NULL follows LONGRUN_RETENTION_DAYS, 0 keeps its runs forever, N
-- deletes them N days after they finished. A run takes its key's value when submitted.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS retention_days integer
    CHECK (retention_days >= 0);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS retention_days integer;

-- The finished runs by retention class (NULL: the deployment's) and finish time: the job walks
-- each class from its oldest finished run, so a batch costs its size, not the table's.
CREATE INDEX IF NOT EXISTS runs_retention ON runs (coalesce(retention_days, -1), finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
-- A thread is kept while it has a run not yet expired: the job looks up a thread's runs.
CREATE INDEX IF NOT EXISTS runs_thread ON runs (user_id, thread_id)
    WHERE thread_id IS NOT NULL;
