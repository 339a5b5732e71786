-- The per-user in-flight count (the submit path's cap) reads only the user's active runs,
-- not every run the user ever had: O(active) instead of O(history).
CREATE INDEX runs_user_active ON runs (user_id) WHERE status IN ('queued', 'running');
