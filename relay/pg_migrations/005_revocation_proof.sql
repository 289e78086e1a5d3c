-- The signed revocation: the PostgreSQL twin of relay/migrations/005_revocation_proof.sql.
-- A node that learns of a revocation from the stream or from a re-read of this
-- table (not from the request) still forwards the controller's proof.
ALTER TABLE revocations ADD COLUMN proof bytea;
