-- Start-to-close is enforced on the machine (issue 18): a task's limit travels with
-- its assignment and is kept until the task starts (and after a daemon restart).
ALTER TABLE tasks ADD COLUMN start_to_close REAL NULL;
