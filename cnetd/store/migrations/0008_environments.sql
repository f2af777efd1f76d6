-- Python environments of models (cnetd.ml.envs): one row per spec key, built once under
-- <state_dir>/envs/<key> by a task of kind "env", shared by every task with that spec.
-- status: building | ready | failed. A task names the environment it runs in.
CREATE TABLE environments (
    key TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    interpreter TEXT NOT NULL,
    status TEXT NOT NULL,
    build_task_id TEXT,
    reason TEXT,
    installer TEXT,
    created_at TEXT NOT NULL,
    ready_at TEXT,
    last_used TEXT,
    size_bytes INTEGER,
    build_seconds REAL
);
ALTER TABLE tasks ADD COLUMN environment TEXT;
CREATE INDEX tasks_by_environment ON tasks(environment);
