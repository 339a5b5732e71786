-- Postgres holds a run's events before anyone sees them (issue 14): each flush of a worker's
-- events is committed here first, fenced on the attempt and on seq continuity, then copied to
-- Redis for fan-out. `event_bytes` is the running total the per-run byte cap is checked
-- against (a re-claimed attempt reads it instead of summing the archive). Not indexed: its
-- update, with last_seq's, stays a heap-only (HOT) update.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS event_bytes bigint NOT NULL DEFAULT 0;
