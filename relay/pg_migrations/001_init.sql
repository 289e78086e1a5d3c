-- The relay registry on PostgreSQL (rules: relay/registry.py; the SQLite twin is
-- relay/migrations/001_init.sql, kept table for table and column for column).
--
-- Keys, ids, cards and signatures are bytea; times are double precision seconds
-- since the epoch, always passed in by the caller. `seq` columns give a stable
-- tie-break for "oldest first" where SQLite uses its rowid.

CREATE TABLE accounts (
    id          bytea PRIMARY KEY,
    created_at  double precision NOT NULL
);

CREATE TABLE controllers (
    key         bytea PRIMARY KEY,
    account     bytea NOT NULL REFERENCES accounts (id),
    card        bytea NOT NULL,
    created_at  double precision NOT NULL,
    seq         bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX controllers_by_account ON controllers (account, created_at);

-- Written only by a grant and never deleted; revocation lives in its own table.
CREATE TABLE machines (
    key              bytea PRIMARY KEY,
    account          bytea NOT NULL REFERENCES accounts (id),
    card             bytea NOT NULL,
    granted_by       bytea NOT NULL REFERENCES controllers (key),
    grant_signature  bytea NOT NULL,
    grant_issued_at  double precision NOT NULL,
    paired_at        double precision NOT NULL,
    last_seen        double precision,
    seq              bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX machines_by_account ON machines (account, paired_at);

-- No foreign key to machines on purpose: a revocation is permanent. `seq` lets a
-- node that lost the bus re-read "every revocation after the last one I saw".
CREATE TABLE revocations (
    key         bytea PRIMARY KEY,
    revoked_at  double precision NOT NULL,
    account     bytea NOT NULL,
    revoked_by  bytea NOT NULL,
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE tickets (
    ticket        bytea PRIMARY KEY,
    machine_key   bytea NOT NULL,
    machine_card  bytea NOT NULL,
    created_at    double precision NOT NULL,
    expires_at    double precision NOT NULL,
    failures      integer NOT NULL DEFAULT 0,
    burnt         boolean NOT NULL DEFAULT false,
    opened_by     bytea,
    consumed_at   double precision
);
CREATE INDEX tickets_by_machine ON tickets (machine_key);
CREATE INDEX tickets_by_expiry ON tickets (expires_at) WHERE consumed_at IS NULL;

CREATE TABLE registration_tokens (
    token_hash  bytea PRIMARY KEY,
    created_at  double precision NOT NULL,
    used_at     double precision,
    used_by     bytea
);

-- Metadata only (who, what, when); never message content.
CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       double precision NOT NULL,
    event    text NOT NULL,
    actor    bytea NOT NULL,
    subject  bytea NOT NULL,
    detail   text NOT NULL
);
