-- Operator keys (issue 17: the console's Operations view and the /ops endpoints): a key made
-- with `longrun keys create --operator` sees the whole deployment. And the deployment-wide
-- runs list, newest first, pages by keyset on this index however many runs there are.
ALTER TABLE api_keys ADD COLUMN operator boolean NOT NULL DEFAULT false;
CREATE INDEX runs_created ON runs (created_at DESC, run_id DESC);
