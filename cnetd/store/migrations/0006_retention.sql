-- Log retention: what each task's stored log holds, so the ingester checks
-- logs.max_lines_per_task and logs.max_bytes_per_task without counting rows.
-- dropped: lines 1..dropped are gone; the marker line saying so sits at seq = dropped.
-- stored_bytes: UTF-8 bytes of the lines kept (the marker not counted).
ALTER TABLE log_cursors ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE log_cursors ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE log_cursors SET
    dropped = COALESCE((SELECT MIN(seq) - 1 FROM log_lines WHERE log_lines.task_id = log_cursors.task_id), next_seq - 1),
    stored_bytes = (SELECT COALESCE(SUM(length(CAST(line AS BLOB))), 0) FROM log_lines WHERE log_lines.task_id = log_cursors.task_id);
-- Task retention finds the tasks that ended before tasks.retention.max_age by this index.
CREATE INDEX tasks_by_stopped_at ON tasks(stopped_at)
