"""The controller cache's migration to (machine, id) keys, on a real SQLite file made
by the previous schema: data kept, poisoned rows cleaned, machines kept apart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack

from starmux.client.cache import Cache
from starmux.client.store import DATABASE_FILE, ControllerStore
from starmux.codec import MAX_TIMESTAMP
from starmux.node.database import load_migrations

A, B = b"A" * 32, b"B" * 32
ARGV = msgpack.packb(["make"])


def version_2_database(home: Path) -> None:
    """A controller database as the code before migration 003 left it."""
    home.mkdir(mode=0o700)
    with sqlite3.connect(home / DATABASE_FILE) as db:
        for migration in load_migrations("starmux.client")[:2]:
            for statement in migration.statements:
                db.execute(statement)
        db.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER)")
        db.execute("INSERT INTO schema_version VALUES (0, 2)")
        sessions = [
            ("s-good", A, "running", 100.0),
            ("s-inf", A, "running", float("inf")),  # what a hostile machine left there
            ("s-\x1b[2J", B, "running", 100.0),
            ("s-bad-status", B, "running\x1b[1A", 100.0),
        ]
        for session_id, machine, status, at in sessions:
            db.execute(
                "INSERT INTO sessions (id, machine, title, cwd, argv, status, created_at, "
                "updated_at) VALUES (?, ?, 't', '/', ?, ?, ?, ?)",
                (session_id, machine, ARGV, status, at, at),
            )
        for checkpoint_id, expires_at, decision in [
            ("c-good", 2000.0, None),
            ("c-1e300", 1e300, None),
            ("c-odd", 2000.0, "sure"),
        ]:
            db.execute(
                "INSERT INTO checkpoints (id, machine, session, title, body, created_at, "
                "expires_at, default_approve, decision) VALUES (?, ?, 's-good', 't', '', "
                "100.0, ?, 0, ?)",
                (checkpoint_id, A, expires_at, decision),
            )
        db.execute(
            "INSERT INTO events (machine, seq, session, at, body) VALUES (?, 1, 's-good', ?, x'')",
            (A, float("-inf")),
        )
        db.execute(
            "INSERT INTO outbox (command_id, machine, kind, body, created_at) "
            "VALUES ('k-1', ?, 'cancel-session', x'', 1.0)",
            (A,),
        )


async def test_the_migration_keys_rows_by_machine_and_drops_poison(tmp_path: Path) -> None:
    home = tmp_path / "home"
    version_2_database(home)

    async with ControllerStore(home) as store:
        cache = Cache(store.db)
        sessions = {(s.machine, s.id): s for s in await cache.sessions()}
        assert set(sessions) == {(A, "s-good"), (A, "s-inf")}
        assert sessions[(A, "s-inf")].created_at == MAX_TIMESTAMP
        assert {c.id: c.expires_at for c in await cache.checkpoints(pending_only=False)} == {
            "c-good": 2000.0,
            "c-1e300": MAX_TIMESTAMP,
        }
        events = await cache.session_events("s-good", machine=A)
        assert [(e.seq, e.at) for e in events] == [(1, 0.0)]
        assert [c.command_id for c in await cache.pending(A)] == ["k-1"]

        # From now on the same id on another machine is another row.
        await store.db.execute(
            "INSERT INTO sessions (id, machine, title, cwd, argv, status, created_at, "
            "updated_at) VALUES ('s-good', ?, 't', '/', ?, 'queued', 1.0, 1.0)",
            (B, ARGV),
        )
        assert len(await cache.sessions()) == 3
