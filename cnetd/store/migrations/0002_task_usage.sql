-- The last CPU/memory sample of a task (with its memory peak), kept once it ends.
ALTER TABLE tasks ADD COLUMN usage TEXT;
