-- Human in the loop (issue 16): a run may wait for a person. A waiting run holds no queue
-- entry, no lease and no worker slot; Postgres alone says it waits, for what, and until when.
-- `runs.interrupt` is the pending interrupt as `GET /runs/{id}` shows it; `run_interrupts` keeps
-- every interrupt of a run and its answer, which the attempt after a resume replays to the agent
-- (found by `key`: the payload's digest and how often the attempt had asked it).
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled'));

ALTER TABLE runs ADD COLUMN IF NOT EXISTS interrupt jsonb;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS waiting_since timestamptz;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS interrupt_deadline timestamptz;

-- The waiting runs (`/metrics`: how many, the oldest) and the deadlines the reconciler scans.
CREATE INDEX IF NOT EXISTS runs_waiting ON runs (waiting_since) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS runs_interrupt_due ON runs (interrupt_deadline)
    WHERE status = 'waiting' AND interrupt_deadline IS NOT NULL;
-- A waiting run holds its thread's turn: the claim of a later run looks for it.
CREATE INDEX IF NOT EXISTS runs_thread_waiting ON runs (user_id, thread_id, created_at, run_id)
    WHERE status = 'waiting' AND thread_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS run_interrupts (
    run_id        uuid NOT NULL,
    interrupt_id  text NOT NULL,
    key           text NOT NULL,
    attempt       integer NOT NULL,
    payload       jsonb,
    has_default   boolean NOT NULL,
    default_value jsonb,
    deadline      timestamptz,
    asked_at      timestamptz NOT NULL DEFAULT now(),
    -- NULL while pending; `answered` (a resume), `default` (the deadline took the default),
    -- `timed_out` (the deadline failed the run).
    outcome       text CHECK (outcome IN ('answered', 'default', 'timed_out')),
    value         jsonb,
    answered_at   timestamptz,
    PRIMARY KEY (run_id, interrupt_id),
    UNIQUE (run_id, key)
);
