-- Approval rules (issue 19, daemon/rulebook.py): a session's standing answers to
-- checkpoints that match a pattern, set by a device with the rules action. Removed
-- rules keep their row (removed_at, removed_by): the audit trail names them.
CREATE TABLE approval_rules (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    pattern TEXT NOT NULL,
    effect TEXT NOT NULL CHECK (effect IN ('allow', 'deny')),
    set_by BLOB NOT NULL,
    set_at REAL NOT NULL,
    removed_at REAL NULL,
    removed_by BLOB NULL
);

CREATE INDEX approval_rules_session ON approval_rules (session) WHERE removed_at IS NULL;
