-- Child nodes that report to this agent (parent/child cluster). One row per child, updated
-- by each heartbeat; `report` is the child's last report as JSON (never its token).
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    report TEXT NOT NULL,
    interval REAL NOT NULL,
    registered_at TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
