-- The user a task's processes ran as (tasks.run_as, or the agent's own user), set at start.
ALTER TABLE tasks ADD COLUMN run_as TEXT;
