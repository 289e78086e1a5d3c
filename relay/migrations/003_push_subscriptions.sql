-- Web Push subscriptions (issue 16, relay/web_push.py): one per controller device,
-- registered by the device (signed by its key). The endpoint and keys are the
-- browser's: they let whoever holds them send this browser pushes it can decrypt,
-- so they are kept like the rest of the registry (0600 file, or PostgreSQL).
CREATE TABLE push_subscriptions (
    device         BLOB PRIMARY KEY CHECK (typeof(device) = 'blob'),
    account        BLOB NOT NULL CHECK (typeof(account) = 'blob'),
    endpoint       TEXT NOT NULL,
    p256dh         BLOB NOT NULL CHECK (typeof(p256dh) = 'blob'),
    auth           BLOB NOT NULL CHECK (typeof(auth) = 'blob'),
    registered_at  REAL NOT NULL
);
