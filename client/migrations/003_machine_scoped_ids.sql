-- Session and checkpoint ids are only unique within one machine: a machine chooses
-- checkpoint ids, and any machine can name another machine's session id. Keyed by
-- id alone, machine B's events could change machine A's rows (status, costs, a
-- checkpoint's decision). From here on every row is keyed by (machine, id).
--
-- Rows a compromised machine could have written before the decoder refused them
-- go too: ids that are not plain ids, unknown statuses or decisions; and times that
-- no formatter can show (inf, 1e300) are clamped into 1970..3000.

CREATE TABLE sessions_v3 (
    machine BLOB NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    cwd TEXT NOT NULL,
    argv BLOB NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (machine, id)
);
INSERT INTO sessions_v3 (machine, id, title, cwd, argv, status, exit_code,
    created_at, updated_at, input_tokens, output_tokens, usd)
SELECT machine, id, title, cwd, argv, status, exit_code,
    max(0.0, min(created_at, 32503680000.0)), max(0.0, min(updated_at, 32503680000.0)),
    input_tokens, output_tokens, usd
FROM sessions
WHERE length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^A-Za-z0-9_-]*'
    AND status IN ('queued', 'running', 'waiting_approval', 'succeeded', 'failed',
                   'cancelled', 'lost');
DROP TABLE sessions;
ALTER TABLE sessions_v3 RENAME TO sessions;
CREATE INDEX sessions_by_machine ON sessions (machine, created_at);
CREATE INDEX sessions_by_id ON sessions (id);

CREATE TABLE checkpoints_v3 (
    machine BLOB NOT NULL,
    id TEXT NOT NULL,
    session TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    default_approve INTEGER NOT NULL,
    decision TEXT,
    decided_by BLOB,
    reason TEXT,
    decided_at REAL,
    PRIMARY KEY (machine, id)
);
INSERT INTO checkpoints_v3 (machine, id, session, title, body, created_at,
    expires_at, default_approve, decision, decided_by, reason, decided_at)
SELECT machine, id, session, title, body,
    max(0.0, min(created_at, 32503680000.0)), max(0.0, min(expires_at, 32503680000.0)),
    default_approve, decision, decided_by, reason,
    CASE WHEN decided_at IS NULL THEN NULL ELSE max(0.0, min(decided_at, 32503680000.0)) END
FROM checkpoints
WHERE length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^A-Za-z0-9_-]*'
    AND length(session) BETWEEN 1 AND 64 AND session NOT GLOB '*[^A-Za-z0-9_-]*'
    AND (decision IS NULL OR decision IN ('approved', 'denied', 'expired'));
DROP TABLE checkpoints;
ALTER TABLE checkpoints_v3 RENAME TO checkpoints;
CREATE INDEX checkpoints_by_id ON checkpoints (id);
CREATE INDEX checkpoints_pending ON checkpoints (decision, created_at);

UPDATE events SET at = max(0.0, min(at, 32503680000.0))
WHERE NOT (at BETWEEN 0.0 AND 32503680000.0);

-- The session a StartSession created, so that a bare session id resolves to the
-- machine this controller started it on (older rows: found by their machine alone).
ALTER TABLE outbox ADD COLUMN session TEXT;
CREATE INDEX outbox_by_session ON outbox (session);
