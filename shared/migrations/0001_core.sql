-- Core schema: API keys, runs (the truth), their archived events and checkpoints.

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,              -- the public prefix part, e.g. lr_ab12cd34
    user_id     text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,         -- sha256 of the whole key; the key itself is never stored
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE runs (
    run_id            uuid PRIMARY KEY,
    user_id           text NOT NULL,
    thread_id         text,
    agent             text NOT NULL,
    input             text NOT NULL,
    params            jsonb NOT NULL DEFAULT '{}',
    metadata          jsonb NOT NULL DEFAULT '{}',
    status            text NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
    attempt           integer NOT NULL DEFAULT 0,
    output            jsonb,
    error             jsonb,
    usage             jsonb NOT NULL DEFAULT '{}',
    cost_usd          double precision NOT NULL DEFAULT 0,
    last_seq          integer NOT NULL DEFAULT 0,   -- highest archived event seq
    cancel_requested  boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_user_created ON runs (user_id, created_at DESC, run_id DESC);
CREATE INDEX runs_active ON runs (status, updated_at) WHERE status IN ('queued', 'running');

CREATE TABLE run_events (
    run_id   uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq      integer NOT NULL,
    type     text NOT NULL,
    data     bytea NOT NULL,               -- the JSON object exactly as served
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_checkpoints (
    run_id      uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    step        integer NOT NULL,
    attempt     integer NOT NULL,
    state       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);
