-- Per-version roll-ups of served models' requests: one row per served model version and
-- roll-up interval (serving.rollup_interval, a minute by default), written by the monitor
-- (cnetd/ml/monitor). `at` is when the interval ended (UTC, ISO 8601 with milliseconds),
-- `seconds` its length; latencies are end-to-end (arrival at the batcher to answer), in
-- seconds, NULL when no request was answered. No foreign key: a model's history outlives
-- the model until serving.rollup_retention removes it.
CREATE TABLE model_rollups (
    model_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    at TEXT NOT NULL,
    seconds REAL NOT NULL,
    count INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    p50 REAL,
    p95 REAL,
    p99 REAL,
    PRIMARY KEY (model_id, at)
);
CREATE INDEX model_rollups_name_at ON model_rollups (name, at);
CREATE INDEX model_rollups_at ON model_rollups (at)
