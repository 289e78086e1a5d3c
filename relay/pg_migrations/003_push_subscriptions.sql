-- Web Push subscriptions (issue 16, relay/web_push.py): see the SQLite migration.
-- In PostgreSQL so that any node of a cluster can push to a device that registered
-- through another.
CREATE TABLE push_subscriptions (
    device         bytea PRIMARY KEY,
    account        bytea NOT NULL,
    endpoint       text NOT NULL,
    p256dh         bytea NOT NULL,
    auth           bytea NOT NULL,
    registered_at  double precision NOT NULL
);
