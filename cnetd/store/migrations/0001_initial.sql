CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    env TEXT NOT NULL,
    working_dir TEXT NOT NULL,
    resources TEXT NOT NULL,
    timeout REAL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    stopped_at TEXT,
    exit_code INTEGER,
    reason TEXT,
    unit TEXT,
    log_file TEXT NOT NULL,
    progress REAL,
    result TEXT,
    model_id TEXT,
    node_id TEXT NOT NULL,
    sandbox TEXT,
    handle TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_status ON tasks(status);
CREATE INDEX tasks_by_model ON tasks(model_id);

CREATE TABLE task_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(id),
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX task_events_by_task ON task_events(task_id, id);

CREATE TABLE log_lines (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

-- How far each task's log file has been ingested: advanced in the same transaction
-- as the lines it covers, so a crash can neither lose nor double a line.
CREATE TABLE log_cursors (
    task_id TEXT PRIMARY KEY,
    offset INTEGER NOT NULL,
    next_seq INTEGER NOT NULL
);

CREATE TABLE models (
    id TEXT PRIMARY KEY REFERENCES tasks(id),
    name TEXT NOT NULL,
    model_type TEXT NOT NULL,
    model_path TEXT NOT NULL,
    script_path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    serving TEXT
);
