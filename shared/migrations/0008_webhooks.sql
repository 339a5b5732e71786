-- Signed webhooks (issue 15): a run may name a webhook (or inherit its API key's default), and
-- each terminal state of such a run records a delivery in the same statement that commits the
-- state (shared/store/webhooks.py). Workers send due deliveries, claimed with SKIP LOCKED, and
-- record each attempt.

-- Each key signs its runs' webhooks with its own secret (`whsec_` + base64, shown once). After
-- a rotation the previous secret signs too for a grace period (Standard Webhooks' zero-downtime
-- rotation: several signatures in one header).
ALTER TABLE api_keys
    ADD COLUMN IF NOT EXISTS webhook_url text,
    ADD COLUMN IF NOT EXISTS webhook_secret text,
    ADD COLUMN IF NOT EXISTS webhook_secret_prev text,
    ADD COLUMN IF NOT EXISTS webhook_secret_rotated_at timestamptz;

-- The target a run's terminal state is sent to, and the key whose secret signs it.
ALTER TABLE runs
    ADD COLUMN IF NOT EXISTS webhook_url text,
    ADD COLUMN IF NOT EXISTS webhook_key_id text;

-- One message (`webhook-id`) per terminal state of a run. `attempts` numbers every attempt
-- ever made (the fence of an attempt's result); `schedule_from`/`schedule_attempts` bound the
-- current retry schedule (a redelivery starts a new one). `payload` is the body, rendered at
-- the first attempt so that every attempt sends the same bytes.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id        text PRIMARY KEY,
    run_id             uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    event_type         text NOT NULL,
    state              text NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'delivered', 'failed')),
    next_at            timestamptz NOT NULL DEFAULT now(),
    attempts           integer NOT NULL DEFAULT 0,
    schedule_from      timestamptz NOT NULL DEFAULT now(),
    schedule_attempts  integer NOT NULL DEFAULT 0,
    payload            bytea,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- The workers' poll: due pending deliveries, oldest first; its size follows the backlog.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_run ON webhook_deliveries (run_id, created_at);
-- `/metrics`: the deliveries given up lately.
CREATE INDEX IF NOT EXISTS webhook_deliveries_failed ON webhook_deliveries (updated_at)
    WHERE state = 'failed';

-- Every attempt: written `sending` when claimed (so one whose worker died shows), then its
-- outcome: the answer's status code, the latency, or what went wrong.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    attempt_id     text PRIMARY KEY,
    delivery_id    text NOT NULL REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
    n              integer NOT NULL,
    status         text NOT NULL DEFAULT 'sending'
                   CHECK (status IN ('sending', 'succeeded', 'failed')),
    response_code  integer,
    latency_ms     double precision,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id, n);
