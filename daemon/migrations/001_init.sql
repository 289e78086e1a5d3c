-- The machine daemon's state: settings, the controllers that paired it, an audit log.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE controllers (
    key BLOB PRIMARY KEY CHECK (length(key) = 32),
    card BLOB NOT NULL,
    account BLOB NOT NULL,
    grant_signature BLOB NOT NULL,
    grant_issued_at REAL NOT NULL,
    paired_at REAL NOT NULL
);

-- Who did what, when: metadata only.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    actor BLOB NOT NULL,
    detail TEXT NOT NULL
);
