-- Notification targets and settings (issue 16, daemon/notifications.py), stored with
-- the device that registered them: a device removed from the account loses them,
-- and one device never sees or changes another's. A webhook URL may be a secret
-- (an ntfy topic is a capability): it stays in this file (0600) and never reaches
-- the event log.
CREATE TABLE notify_targets (
    device BLOB NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (device, target)
);

CREATE TABLE notify_settings (
    device BLOB PRIMARY KEY,
    kinds TEXT NOT NULL,
    reminder_fraction REAL NOT NULL
);
