-- The controller's signed revocation (a MachineRevocation control message, as
-- the relay forwards it to the machine), kept with the revocation so any path
-- that cuts the machine off can deliver the proof, not only the request handler
-- that received it. NULL: revoked before this column existed.
ALTER TABLE revocations ADD COLUMN proof BLOB CHECK (proof IS NULL OR typeof(proof) = 'blob');
