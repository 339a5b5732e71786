-- Schedules (issue 19): a cron expression in a time zone and the run each of its ticks makes.
-- `next_tick_at` is the instant (UTC) of the next tick; the workers' ticker takes due schedules
-- FOR UPDATE SKIP LOCKED (partial index `schedules_due`). A deleted schedule keeps its row
-- (`deleted_at`) so the runs it made stay linked to it; it is never due again.
CREATE TABLE schedules (
    schedule_id   uuid PRIMARY KEY,
    user_id       text NOT NULL,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    -- the run template: what a POST /runs would take (checked by the same code)
    agent         text NOT NULL,
    input         text NOT NULL,
    params        jsonb NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}',
    thread_id     text,
    key_id        text,                 -- the key that made it: its default webhook signs the runs'
    next_tick_at  timestamptz NOT NULL,
    last_tick_at  timestamptz,
    ticks         bigint NOT NULL DEFAULT 0,   -- runs made (the /metrics counter sums these)
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
CREATE INDEX schedules_user_created ON schedules (user_id, created_at DESC, schedule_id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX schedules_due ON schedules (next_tick_at) WHERE deleted_at IS NULL;

-- One row per (schedule, tick): the unique key that makes each tick make exactly one run, across
-- any number of workers and restarts. No foreign key to runs: retention may delete an old run,
-- and the tick stays made.
CREATE TABLE schedule_ticks (
    schedule_id  uuid NOT NULL REFERENCES schedules (schedule_id) ON DELETE CASCADE,
    tick_at      timestamptz NOT NULL,
    run_id       uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, tick_at)
);
