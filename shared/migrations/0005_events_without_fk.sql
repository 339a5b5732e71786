-- The archived events no longer carry a foreign key to their run. Only the worker's fenced
-- terminal and checkpoint writes add them, and those lock the run's row in the same transaction
-- (a run's events cannot outlive it or precede it). The key's check cost a trigger call and a
-- row lock per event row: about a third of Postgres's time per finished run in the dispatch
-- benchmark (bench/RESULTS.md). Nothing deletes a run that has events: the only delete of runs
-- is of queued runs that never reached the queue (attempt 0, no events).
ALTER TABLE run_events DROP CONSTRAINT IF EXISTS run_events_run_id_fkey;
