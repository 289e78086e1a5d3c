-- The task book's placement memory (issue 18, starmux/dispatch.py), durable so a
-- controller agent restart neither restarts the round-robin rotation, nor forgets
-- which machine last ran a cwd (affinity), nor sends a task's next attempt back to
-- the machine that just let it time out (avoid) or refused it (refused).
--
-- avoid: JSON list of machine keys (hex), used only when no other is eligible;
-- refused: JSON object machine key (hex) → the machine's reason (cut to 300 chars).
ALTER TABLE tasks ADD COLUMN avoid TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tasks ADD COLUMN refused TEXT NOT NULL DEFAULT '{}';

-- Why a task failed without an exit code (a refusal, attempts used up), per event.
ALTER TABLE task_events ADD COLUMN reason TEXT NULL;

-- The round-robin cursor: the id (key hex) of the last machine picked; one row.
CREATE TABLE placement_cursor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    machine TEXT NULL
);

-- Affinity: the machine that last started a task in each cwd. Kept to the newest
-- rows by TaskStore.set_affinity, so a controller that ran many cwds stays small.
CREATE TABLE cwd_affinity (
    cwd TEXT PRIMARY KEY,
    machine TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX cwd_affinity_by_age ON cwd_affinity (at);
