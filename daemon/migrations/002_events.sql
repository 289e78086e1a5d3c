-- The durable event log and the state derived from it (daemon/eventlog.py writes both
-- in one transaction, so a snapshot never disagrees with the log).

-- AUTOINCREMENT: a seq is never reused, even after old events are pruned; the row it
-- keeps in sqlite_sequence is the log's high-water mark (see EventLog's epoch rules).
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    session TEXT NOT NULL,
    body BLOB NOT NULL
);

-- One session's history, in seq order (the rowid is the index's last column anyway;
-- naming it documents the query it serves).
CREATE INDEX events_session ON events (session, seq);

-- The current snapshot of each session; argv is msgpack.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    argv BLOB NOT NULL,
    cwd TEXT NOT NULL,
    title TEXT NOT NULL,
    pid INTEGER NULL,
    exit_code INTEGER NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0
);

-- The outcome of every controller command, so a command delivered twice runs once.
CREATE TABLE commands (
    command_id TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    error TEXT NOT NULL,
    hint TEXT NOT NULL,
    result TEXT NOT NULL,
    at REAL NOT NULL
);

-- Approval requests and their decisions.
CREATE TABLE checkpoints (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    default_approve INTEGER NOT NULL,
    decision TEXT NULL,
    decided_by BLOB NULL,
    reason TEXT NULL,
    decided_at REAL NULL,
    signature BLOB NULL
);

CREATE INDEX checkpoints_session ON checkpoints (session);
