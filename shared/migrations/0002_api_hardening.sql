-- The hardened API: idempotency keys for POST /runs, and an index for the per-user count of
-- runs in flight (queued + running) that admission takes on every submit.

CREATE TABLE idempotency_keys (
    user_id     text NOT NULL,
    key         text NOT NULL,                 -- the client's Idempotency-Key, scoped per user
    body_hash   bytea NOT NULL,                -- sha256 of the normalised request body
    run_id      uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)                 -- two racing submits cannot both insert
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE INDEX runs_user_in_flight ON runs (user_id) WHERE status IN ('queued', 'running');
