-- The relay registry (see relay/registry.py for the rules it keeps).
--
-- Keys, ids, cards and signatures are BLOBs, checked to be BLOBs: a text key
-- would never compare equal to its bytes and lookups would silently miss.
-- Times are REAL seconds since the epoch, always passed in by the caller.
-- No secrets: registration tokens are stored as hashes only; tickets are
-- one-time ids, not secrets (the pairing secret never reaches the relay).
-- Plain (not STRICT) tables and no RETURNING, so any SQLite >= 3.24 works.

CREATE TABLE accounts (
    id          BLOB PRIMARY KEY CHECK (typeof(id) = 'blob'),
    created_at  REAL NOT NULL
);

CREATE TABLE controllers (
    key         BLOB PRIMARY KEY CHECK (typeof(key) = 'blob'),
    account     BLOB NOT NULL REFERENCES accounts (id),
    card        BLOB NOT NULL CHECK (typeof(card) = 'blob'),
    created_at  REAL NOT NULL
);
CREATE INDEX controllers_by_account ON controllers (account, created_at);

-- A machine row is written only by a grant and never deleted; revocation lives
-- in its own table so that it outlives any row here.
CREATE TABLE machines (
    key              BLOB PRIMARY KEY CHECK (typeof(key) = 'blob'),
    account          BLOB NOT NULL REFERENCES accounts (id),
    card             BLOB NOT NULL CHECK (typeof(card) = 'blob'),
    granted_by       BLOB NOT NULL REFERENCES controllers (key),
    grant_signature  BLOB NOT NULL CHECK (typeof(grant_signature) = 'blob'),
    grant_issued_at  REAL NOT NULL,
    paired_at        REAL NOT NULL,
    last_seen        REAL
);
CREATE INDEX machines_by_account ON machines (account, paired_at);

-- No foreign key to machines on purpose: a revocation is permanent.
CREATE TABLE revocations (
    key         BLOB PRIMARY KEY CHECK (typeof(key) = 'blob'),
    revoked_at  REAL NOT NULL,
    account     BLOB NOT NULL,
    revoked_by  BLOB NOT NULL  -- controller key that signed the revoke
);

-- opened_by has no foreign key: the endpoint authenticates controllers, and a
-- ticket opened by an unknown key simply never matches a valid grant.
CREATE TABLE tickets (
    ticket        BLOB PRIMARY KEY CHECK (typeof(ticket) = 'blob'),
    machine_key   BLOB NOT NULL CHECK (typeof(machine_key) = 'blob'),
    machine_card  BLOB NOT NULL CHECK (typeof(machine_card) = 'blob'),
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,
    -- Stored, not derived from failures: max_failures is the caller's setting
    -- and may change between restarts; a burnt ticket must stay burnt.
    burnt         INTEGER NOT NULL DEFAULT 0 CHECK (burnt IN (0, 1)),
    opened_by     BLOB,
    consumed_at   REAL
);
CREATE INDEX tickets_by_machine ON tickets (machine_key);
CREATE INDEX tickets_by_expiry ON tickets (expires_at) WHERE consumed_at IS NULL;

CREATE TABLE registration_tokens (
    token_hash  BLOB PRIMARY KEY CHECK (typeof(token_hash) = 'blob'),
    created_at  REAL NOT NULL,
    used_at     REAL,
    used_by     BLOB  -- controller key that redeemed it
);

-- Metadata only (who, what, when); never message content.
CREATE TABLE audit_log (
    -- AUTOINCREMENT: ids are never reused, so "newest first" stays true after pruning.
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    event    TEXT NOT NULL,
    actor    BLOB NOT NULL,
    subject  BLOB NOT NULL,
    detail   TEXT NOT NULL
);
