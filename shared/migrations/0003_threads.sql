-- Threads: one run at a time per thread, in submission order, enforced by data (a partial
-- unique index on the running run of a thread), and the conversation history of a thread.

CREATE UNIQUE INDEX runs_one_running_per_thread ON runs (user_id, thread_id)
    WHERE status = 'running' AND thread_id IS NOT NULL;
CREATE INDEX runs_thread_queue ON runs (user_id, thread_id, created_at, run_id)
    WHERE status = 'queued' AND thread_id IS NOT NULL;

CREATE TABLE thread_messages (
    user_id     text NOT NULL,
    thread_id   text NOT NULL,
    seq         integer NOT NULL,
    run_id      uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    role        text NOT NULL,
    content     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, thread_id, seq)
);
