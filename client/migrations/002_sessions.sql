-- The controller's cache of what its machines reported, and its outbox of commands.
CREATE TABLE cursors (
    machine BLOB PRIMARY KEY,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    machine BLOB NOT NULL,
    title TEXT NOT NULL,
    cwd TEXT NOT NULL,
    argv BLOB NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_machine ON sessions (machine, created_at);

CREATE TABLE events (
    machine BLOB NOT NULL,
    seq INTEGER NOT NULL,
    session TEXT NOT NULL,
    at REAL NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (machine, seq)
);
CREATE INDEX events_by_session ON events (session, machine, seq);

CREATE TABLE checkpoints (
    id TEXT PRIMARY KEY,
    machine BLOB NOT NULL,
    session TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    default_approve INTEGER NOT NULL,
    decision TEXT,
    decided_by BLOB,
    reason TEXT,
    decided_at REAL
);

CREATE TABLE outbox (
    command_id TEXT PRIMARY KEY,
    machine BLOB NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    acked_at REAL,
    ok INTEGER,
    error TEXT,
    hint TEXT,
    result TEXT
);
CREATE INDEX outbox_pending ON outbox (machine, acked_at, created_at);
