-- Priorities (issue 19): a run's priority orders it in the queue (high, then normal, then low,
-- with a starvation bound for the lower ones: shared/redis/scripts/pull.lua), and each API key
-- has the highest priority its runs may ask for (`longrun keys create --max-priority`). Keys
-- made before get `normal`: a higher priority is granted, not assumed.
ALTER TABLE runs ADD COLUMN priority text NOT NULL DEFAULT 'normal'
    CHECK (priority IN ('high', 'normal', 'low'));
ALTER TABLE api_keys ADD COLUMN max_priority text NOT NULL DEFAULT 'normal'
    CHECK (max_priority IN ('high', 'normal', 'low'));
