-- Delayed runs (issue 19): a run submitted with `start_after` / `start_at` is queued but not
-- runnable before this time (NULL: at once). Until then Redis keeps it in a sorted set, not the
-- queue stream; the reconciler finds those Redis lost through this partial index, which holds
-- only the delayed runs still queued.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS start_at timestamptz;
CREATE INDEX IF NOT EXISTS runs_scheduled ON runs (start_at)
    WHERE status = 'queued' AND start_at IS NOT NULL;
