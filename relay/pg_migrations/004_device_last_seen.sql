-- Device presence: the PostgreSQL twin of relay/migrations/004_device_last_seen.sql.
ALTER TABLE controllers ADD COLUMN last_seen double precision;
