-- The controller's local state: settings and the machines it paired.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE machines (
    key BLOB PRIMARY KEY CHECK (length(key) = 32),
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    card BLOB NOT NULL,
    paired_at REAL NOT NULL,
    last_seen REAL
);
