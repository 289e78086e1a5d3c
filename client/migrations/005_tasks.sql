-- The controller's task book (issue 18, client/fleet.py): tasks live here from
-- submission to a final state, so a task waiting for an eligible machine (the
-- durable outbox of tasks) survives a controller agent restart.
--
-- task: the task_state.Task fields as JSON (state, attempt, machine, times);
-- spec: where it may run (tags, or one machine's key) and how to choose;
-- request: what to run (argv, cwd, title, env, pty, start-to-close). env may hold
-- secrets, as the command outbox's bodies do; both stay in this 0600 file.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    spec TEXT NOT NULL,
    request TEXT NOT NULL,
    assign_command TEXT NULL,
    session TEXT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX tasks_by_age ON tasks (created_at);

-- Every transition of every task: its time, attempt, machine (key, hex) and trigger.
CREATE TABLE task_events (
    task TEXT NOT NULL,
    at REAL NOT NULL,
    attempt INTEGER NOT NULL,
    machine TEXT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    trigger TEXT NOT NULL
);
CREATE INDEX task_events_by_task ON task_events (task, at);

-- What each machine last reported for placement (its machine-load event), keyed by
-- the machine: one machine's report never changes another's row.
CREATE TABLE machine_loads (
    machine BLOB PRIMARY KEY,
    tags TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    running INTEGER NOT NULL,
    queued INTEGER NOT NULL,
    at REAL NOT NULL
);

-- The last event of each machine the task book has taken in (a task-progress or a
-- machine-load): after an agent restart the book reads what the cache applied past
-- it, so a report applied to the cache but not yet to a task is not lost.
CREATE TABLE task_cursors (
    machine BLOB PRIMARY KEY,
    seq INTEGER NOT NULL
);
