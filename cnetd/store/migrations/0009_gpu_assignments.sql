-- The GPUs each task was given: a whole GPU (memory NULL) or a share of one (memory: the
-- bytes reserved on it). Written in the same transaction that moves the task from pending
-- to starting, so two tasks never get the same whole GPU. A row counts against its GPU
-- only while its task is starting or running (an ended task's rows say which GPUs it had);
-- retention deletes them with the task.
CREATE TABLE gpu_assignments (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    gpu_uuid TEXT NOT NULL,
    memory INTEGER,
    PRIMARY KEY (task_id, gpu_uuid)
);
CREATE INDEX gpu_assignments_gpu ON gpu_assignments (gpu_uuid)
