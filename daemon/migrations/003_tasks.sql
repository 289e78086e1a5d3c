-- The machine's durable task queue (issue 18, daemon/taskqueue.py): the tasks
-- controllers delivered here and the state each is in on this machine. argv and env
-- are msgpack; env may hold secrets, so the row keeps it only until the task starts.

-- One row per task id, so a task delivered twice is stored, and run, once. A new
-- attempt of a task that was lost here replaces its row and gets a new arrival.
-- arrival is AUTOINCREMENT: the age order never reuses a number.
CREATE TABLE tasks (
    arrival INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    attempt INTEGER NOT NULL CHECK (attempt >= 1),
    priority INTEGER NOT NULL,
    argv BLOB NOT NULL,
    cwd TEXT NOT NULL,
    title TEXT NOT NULL,
    env BLOB NOT NULL,
    pty INTEGER NOT NULL,
    state TEXT NOT NULL,
    received_at REAL NOT NULL,
    started_at REAL NULL,
    finished_at REAL NULL,
    exit_code INTEGER NULL,
    session TEXT NULL
);

-- What to start next: the waiting tasks by priority (highest first), then age.
CREATE INDEX tasks_by_turn ON tasks (state, priority DESC, arrival);
