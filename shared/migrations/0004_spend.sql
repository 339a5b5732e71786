-- Daily spend per user (UTC days), shared by every worker: the per-user daily cost ceiling.
CREATE TABLE user_daily_spend (
    user_id  text NOT NULL,
    day      date NOT NULL,
    usd      double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);
