-- Accounts with many devices (DESIGN.md section 9): each account's device log.
-- The PostgreSQL twin of relay/migrations/002_device_logs.sql (read it for why).

CREATE TABLE device_log (
    account  bytea NOT NULL REFERENCES accounts (id),
    seq      integer NOT NULL CHECK (seq >= 0),
    hash     bytea NOT NULL,
    entry    bytea NOT NULL,
    author   bytea NOT NULL,
    at       double precision NOT NULL,
    PRIMARY KEY (account, seq)
);

-- Removal is permanent, like a machine revocation: no foreign key, outlives rows.
CREATE TABLE removed_devices (
    key         bytea PRIMARY KEY,
    account     bytea NOT NULL,
    removed_at  double precision NOT NULL,
    removed_by  bytea NOT NULL
);
