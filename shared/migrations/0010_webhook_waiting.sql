-- `run.waiting` webhooks (issue 16 with issue 15): a run that starts waiting for a person records
-- a delivery in the same statement, like a terminal state. Unlike a terminal run, a waiting run
-- moves on (resumed, running, finished) before the sender may render the body, so the delivery
-- keeps the run's row as it was when recorded; the body is rendered from it (NULL: from the
-- run's current row, which a terminal state no longer changes).
ALTER TABLE webhook_deliveries ADD COLUMN IF NOT EXISTS run_snapshot jsonb;
