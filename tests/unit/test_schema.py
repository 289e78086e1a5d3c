"""The migration runner, against real SQLite files and a throwaway package of
migration files on ``sys.path`` (so the runner is exercised exactly as a role
package would use it, through importlib.resources)."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import aiosqlite
import pytest

from starmux.node.database import SchemaError, load_migrations, migrate, split_statements

FIRST = "CREATE TABLE t (a INTEGER);"
SECOND = "ALTER TABLE t ADD COLUMN b TEXT;"  # needs FIRST: order matters
THIRD = "INSERT INTO t (a, b) VALUES (1, 'x;y');"  # not idempotent: must run once


class Package:
    """A package ``name`` with a ``migrations`` folder the test writes into."""

    def __init__(self, root: pathlib.Path) -> None:
        self.name = f"schema_test_{uuid.uuid4().hex}"
        self.folder = root / self.name / "migrations"
        self.folder.mkdir(parents=True)
        (root / self.name / "__init__.py").write_text("")

    def write(self, filename: str, sql: str) -> None:
        (self.folder / filename).write_text(sql)


@pytest.fixture
def package(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Package]:
    root = tmp_path / "pkgs"
    root.mkdir()
    pkg = Package(root)
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    sys.modules.pop(pkg.name, None)


@pytest.fixture
async def db(tmp_path: pathlib.Path) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(tmp_path / "test.db", isolation_level=None) as conn:
        yield conn


async def version_of(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
    assert len(rows) == 1
    return int(rows[0][0])


async def tables_of(db: aiosqlite.Connection) -> set[str]:
    rows = await db.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {str(row[0]) for row in rows}


async def test_fresh_database_without_migrations_is_version_zero(
    package: Package, db: aiosqlite.Connection
) -> None:
    package.write("README.txt", "not a migration")  # non-.sql files are ignored
    assert await migrate(db, package.name) == 0
    assert await version_of(db) == 0


async def test_applies_in_numeric_order(package: Package, db: aiosqlite.Connection) -> None:
    # Written out of order on purpose; the runner sorts by number.
    package.write("003_fill.sql", THIRD)
    package.write("001_create.sql", FIRST)
    package.write("002_add_b.sql", SECOND)
    assert await migrate(db, package.name) == 3
    assert await version_of(db) == 3
    assert list(map(tuple, await db.execute_fetchall("SELECT a, b FROM t"))) == [(1, "x;y")]


async def test_idempotent_and_incremental(package: Package, db: aiosqlite.Connection) -> None:
    package.write("001_create.sql", FIRST)
    package.write("002_add_b.sql", SECOND)
    assert await migrate(db, package.name) == 2
    assert await migrate(db, package.name) == 2
    package.write("003_fill.sql", THIRD)
    assert await migrate(db, package.name) == 3
    assert await migrate(db, package.name) == 3
    assert len(list(await db.execute_fetchall("SELECT * FROM t"))) == 1


async def test_reopen_file_applies_nothing_twice(package: Package, tmp_path: pathlib.Path) -> None:
    package.write("001_create.sql", FIRST)
    package.write("002_fill.sql", "INSERT INTO t VALUES (7);")
    path = tmp_path / "reopen.db"
    for _ in range(3):
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            assert await migrate(conn, package.name) == 2
    async with aiosqlite.connect(path) as conn:
        assert list(map(tuple, await conn.execute_fetchall("SELECT a FROM t"))) == [(7,)]


async def test_refuses_newer_database(package: Package, db: aiosqlite.Connection) -> None:
    package.write("001_create.sql", FIRST)
    package.write("002_add_b.sql", SECOND)
    await migrate(db, package.name)
    await db.execute("UPDATE schema_version SET version = 5")
    with pytest.raises(SchemaError, match=r"version 5 is newer than this starmux knows \(2\)") as e:
        await migrate(db, package.name)
    assert e.value.hint is not None
    assert "upgrade" in e.value.hint
    assert await version_of(db) == 5


async def test_broken_migration_rolls_back(package: Package, db: aiosqlite.Connection) -> None:
    package.write("001_create.sql", FIRST)
    # The first statement succeeds, the second fails: neither may stick.
    package.write("002_broken.sql", "CREATE TABLE u (x);\nINSERT INTO no_such_table VALUES (1);")
    with pytest.raises(SchemaError, match=r"002_broken\.sql failed") as e:
        await migrate(db, package.name)
    assert isinstance(e.value.__cause__, sqlite3.Error)
    assert await version_of(db) == 1
    assert "u" not in await tables_of(db)
    assert not db.in_transaction

    package.write("002_broken.sql", "CREATE TABLE u (x);")  # fixed
    assert await migrate(db, package.name) == 2
    assert "u" in await tables_of(db)


async def test_broken_migration_rolls_back_on_default_connection(
    package: Package, tmp_path: pathlib.Path
) -> None:
    # The daemon or controller may hand in a connection in the sqlite3 module's
    # default (implicit transaction) mode; the guarantees must hold there too.
    package.write("001_create.sql", FIRST)
    package.write("002_broken.sql", "INSERT INTO t VALUES (1);\nINSERT INTO nope VALUES (1);")
    async with aiosqlite.connect(tmp_path / "legacy.db") as conn:
        with pytest.raises(SchemaError):
            await migrate(conn, package.name)
        assert await version_of(conn) == 1
        assert list(await conn.execute_fetchall("SELECT * FROM t")) == []


async def test_transaction_control_is_refused_before_anything_runs(
    package: Package, db: aiosqlite.Connection
) -> None:
    package.write("001_create.sql", FIRST)
    package.write("002_sneaky.sql", "CREATE TABLE u (x);\n-- done\n  COMMIT;")
    with pytest.raises(SchemaError, match="must not control transactions"):
        await migrate(db, package.name)
    assert "t" not in await tables_of(db)  # refused while loading, before 001 ran


async def test_refuses_connection_inside_transaction(
    package: Package, db: aiosqlite.Connection
) -> None:
    await db.execute("BEGIN")
    with pytest.raises(SchemaError, match="inside a transaction"):
        await migrate(db, package.name)


async def test_concurrent_migrators_apply_each_file_once(
    package: Package, tmp_path: pathlib.Path
) -> None:
    package.write("001_create.sql", FIRST)
    package.write("002_add_b.sql", SECOND)
    package.write("003_fill.sql", THIRD)
    path = tmp_path / "race.db"
    async with (
        aiosqlite.connect(path, isolation_level=None) as one,
        aiosqlite.connect(path, isolation_level=None) as two,
    ):
        for conn in (one, two):
            await conn.execute("PRAGMA busy_timeout = 5000")
        versions = await asyncio.gather(migrate(one, package.name), migrate(two, package.name))
        assert list(versions) == [3, 3]
        assert len(list(await one.execute_fetchall("SELECT * FROM t"))) == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_create.sql": FIRST}, "name is not NNN_name.sql"),
        ({"001-create.sql": FIRST}, "name is not NNN_name.sql"),
        ({"001_a.sql": FIRST, "001_b.sql": SECOND}, "two migrations numbered 001"),
        ({"001_a.sql": FIRST, "003_c.sql": THIRD}, "without gaps"),
        ({"002_b.sql": SECOND}, "without gaps"),
        ({"001_a.sql": "CREATE TABLE t (a"}, "incomplete SQL statement"),
    ],
)
async def test_bad_migration_folders_are_refused(
    package: Package, db: aiosqlite.Connection, files: dict[str, str], message: str
) -> None:
    for name, sql in files.items():
        package.write(name, sql)
    with pytest.raises(SchemaError, match=message):
        await migrate(db, package.name)
    assert "schema_version" not in await tables_of(db)


def test_split_statements_respects_literals_comments_and_triggers() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE t (a TEXT DEFAULT ';');
        /* block; comment */
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
            UPDATE t SET a = 'x;' WHERE rowid = new.rowid;
            SELECT 1;
        END;
        ;
        INSERT INTO t VALUES ('end');  -- trailing comment
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[0].endswith("CREATE TABLE t (a TEXT DEFAULT ';');")
    assert statements[1].startswith("/* block; comment */")  # comments stay with their statement
    assert "CREATE TRIGGER" in statements[1]
    assert statements[1].endswith("END;")
    assert statements[2] == "INSERT INTO t VALUES ('end');"


@pytest.mark.parametrize("keyword", ["BEGIN", "commit", "END", "ROLLBACK", "SAVEPOINT s"])
def test_split_statements_refuses_transaction_control(keyword: str) -> None:
    with pytest.raises(SchemaError, match="must not control transactions"):
        split_statements(f"/* x */ {keyword};")


def test_relay_ships_its_migrations() -> None:
    migrations = load_migrations("starmux.relay")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "001_init.sql"
    assert all(m.statements for m in migrations)
