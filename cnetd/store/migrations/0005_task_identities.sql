-- Each model (by name) and each process task runs under a uid of its own (tasks.run_as:
-- dynamic). The owner is "model:<name>" or "task:<id>"; a row lives as long as its uid is
-- handed out, so a uid is never given to two owners at once.
CREATE TABLE identities (
    owner TEXT PRIMARY KEY,
    uid INTEGER NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- The uid a task's processes run as (its owner's dynamic uid, or the static run_as user),
-- set when the task is created; NULL when tasks run as the agent's own user.
ALTER TABLE tasks ADD COLUMN uid INTEGER;
-- The command resolved to an absolute path at submit, with the agent's PATH: exactly what
-- is executed (a request's PATH never chooses the program).
ALTER TABLE tasks ADD COLUMN program TEXT;
