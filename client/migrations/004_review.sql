-- Review before approval (issue 19): a checkpoint's preview (the command or diff it
-- would let happen, as JSON, see starmux/checkpoint_preview.py) and the approval
-- rules machines report, projected from their approval-rule-set/-removed events.
ALTER TABLE checkpoints ADD COLUMN preview TEXT NULL;

CREATE TABLE approval_rules (
    machine BLOB NOT NULL,
    id TEXT NOT NULL,
    session TEXT NOT NULL,
    pattern TEXT NOT NULL,
    effect TEXT NOT NULL,
    set_by BLOB NOT NULL,
    set_at REAL NOT NULL,
    removed_at REAL NULL,
    removed_by BLOB NULL,
    PRIMARY KEY (machine, id)
);
CREATE INDEX approval_rules_by_id ON approval_rules (id);
CREATE INDEX approval_rules_by_session ON approval_rules (machine, session);
