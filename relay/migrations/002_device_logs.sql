-- Accounts with many devices (DESIGN.md section 9): each account's device log.
--
-- One row per entry, the entry's encoded bytes as the controller signed them
-- (the relay verifies them with starmux.device_log before storing; it cannot
-- sign any itself). The `controllers` table stays the lookup that authenticates
-- a device: appending an `add` entry inserts its row, a `remove` deletes it and
-- records the key in `removed_devices`, in the same transaction as the entry.
--
-- Existing accounts get no entry here: the relay holds no key of theirs, so it
-- cannot write a one-entry log for them. An account without a log is treated as
-- the one-device account it was (its single controller acts as owner); that
-- controller uploads its own self-signed first entry the next time it connects
-- (`starmux` does so before any device command), and from then on the log rules.
-- New accounts go the same way right after `register-account`.

CREATE TABLE device_log (
    account  BLOB NOT NULL REFERENCES accounts (id),
    seq      INTEGER NOT NULL CHECK (seq >= 0),
    hash     BLOB NOT NULL CHECK (typeof(hash) = 'blob'),
    entry    BLOB NOT NULL CHECK (typeof(entry) = 'blob'),
    author   BLOB NOT NULL CHECK (typeof(author) = 'blob'),
    at       REAL NOT NULL,
    PRIMARY KEY (account, seq)
);

-- Removal is permanent, like a machine revocation: no foreign key, outlives rows.
CREATE TABLE removed_devices (
    key         BLOB PRIMARY KEY CHECK (typeof(key) = 'blob'),
    account     BLOB NOT NULL,
    removed_at  REAL NOT NULL,
    removed_by  BLOB NOT NULL
);
