"""The controller cache's cursors as committed, kept between page applies."""

from __future__ import annotations

import sqlite3

from starmux.resync import Cursor


class CursorMemo:
    """The cursors as committed, kept between page applies so a batch of many
    machines' pages does not read each machine's cursor again (with 100 machines
    streaming, that lookup was a tenth of the apply).

    Sound only while no other connection wrote: ``PRAGMA data_version`` on the
    connection that last committed says whether one did (it changes with every
    commit of any other connection, and not with this connection's own), and any
    other connection, or a failed or unknown commit, starts the memo over."""

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._version = -1
        self._known: dict[bytes, Cursor] = {}

    def read(
        self, conn: sqlite3.Connection, machines: set[bytes]
    ) -> tuple[int, dict[bytes, Cursor]]:
        """Inside the write transaction: the data version now, and the cursors of
        ``machines`` (a machine without a row is absent)."""
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if conn is not self._conn or version != self._version:
            self.forget()
        missing = machines - self._known.keys()
        loaded = _cursors(conn, missing) if missing else {}
        known = self._known
        return version, {m: c for m in machines if (c := loaded.get(m) or known.get(m))}

    def committed(
        self, conn: sqlite3.Connection, version: int, cursors: dict[bytes, Cursor]
    ) -> None:
        if conn is not self._conn or version != self._version:
            self._known = {}
        self._conn, self._version = conn, version
        self._known.update(cursors)

    def forget(self) -> None:
        self._conn, self._version, self._known = None, -1, {}


def _cursors(conn: sqlite3.Connection, machines: set[bytes]) -> dict[bytes, Cursor]:
    marks = ",".join("?" * len(machines))
    rows = conn.execute(
        f"SELECT machine, epoch, seq FROM cursors WHERE machine IN ({marks})", tuple(machines)
    ).fetchall()
    return {bytes(row[0]): Cursor(row[1], row[2]) for row in rows}
