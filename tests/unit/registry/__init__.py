"""The relay registry against real SQLite files and a real PostgreSQL server."""
