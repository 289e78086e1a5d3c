"""The controller's cache: events per machine (exactly once, in order), projections
of sessions and checkpoints, cursors, and the outbox of commands.

Invariants:
- ``cursors.seq`` is the last event applied for a machine; an event is applied only
  if its ``seq`` is exactly the next one, in the same transaction that advances the
  cursor. So applying a page twice changes nothing, and a gap stops application
  (the caller asks for a resync from the cursor).
- A machine whose log epoch changed (its log was wiped) is forgotten and resynced
  from the start under the new epoch.
- An outbox command stays until the machine acks it; its id makes delivery
  idempotent on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import msgpack

from starmux.errors import MessageError
from starmux.messages import (
    APP,
    CheckpointDecided,
    CheckpointRaised,
    CommandAck,
    CostReported,
    EventPage,
    LoggedEvent,
    SessionCreated,
    SessionStatusChanged,
)
from starmux.resync import Applied as Applied
from starmux.resync import Cursor as Cursor
from starmux.resync import cursor_for, next_in_order


@dataclass(frozen=True)
class SessionRow:
    id: str
    machine: bytes
    title: str
    cwd: str
    argv: list[str]
    status: str
    exit_code: int | None
    created_at: float
    updated_at: float
    input_tokens: int
    output_tokens: int
    usd: float


@dataclass(frozen=True)
class CheckpointRow:
    id: str
    machine: bytes
    session: str
    title: str
    body: str
    created_at: float
    expires_at: float
    default_approve: bool
    decision: str | None
    decided_by: bytes | None
    reason: str | None


@dataclass(frozen=True)
class OutboxCommand:
    command_id: str
    machine: bytes
    kind: str
    body: bytes
    created_at: float
    acked: bool
    ok: bool | None
    error: str | None
    hint: str | None
    result: str | None


_SESSION_COLUMNS = (
    "id, machine, title, cwd, argv, status, exit_code, created_at, updated_at, "
    "input_tokens, output_tokens, usd"
)
_CHECKPOINT_COLUMNS = (
    "id, machine, session, title, body, created_at, expires_at, "
    "default_approve, decision, decided_by, reason"
)


class Cache:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def cursor(self, machine: bytes) -> Cursor:
        return (await self._cursors({machine})).get(machine, Cursor("", 0))

    async def apply_page(self, machine: bytes, page: EventPage) -> Applied:
        return (await self.apply_pages([(machine, page)]))[0]

    async def apply_pages(self, pages: Sequence[tuple[bytes, EventPage]]) -> list[Applied]:
        """Apply pages (of one or several machines, in arrival order) in one
        transaction; one :class:`Applied` per page.

        Group commit: every aiosqlite call is a round trip to the database thread (the
        controller's main cost while output streams), so a batch costs a handful of
        calls whatever its size: the cursors in one read, the events in one
        executemany, the cursors in another, then the projections (rare: output has
        none). The write lock is held throughout, so cursors read at the start stay
        right for the whole batch."""
        if not pages:
            return []
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            cursors = await self._cursors({machine for machine, _ in pages})
            rows: list[tuple[bytes, int, str, float, bytes]] = []
            statements: list[Statement] = []
            results: list[Applied] = []
            for machine, page in pages:
                cursor, wiped = cursor_for(cursors.get(machine, Cursor("", 0)), page)
                if wiped:
                    # The machine's log was wiped: what this batch queued for it
                    # goes too (written first, so the delete sees it).
                    await self._write(rows, statements)
                    rows, statements = [], []
                    await self._forget_machine_data(machine)
                applied = next_in_order(cursor.seq, page.events)
                for event in applied.events:
                    rows.append((machine, event.seq, event.session, event.at, event.body))
                    statement = projection(machine, event)
                    if statement is not None:
                        statements.append(statement)
                if applied.events:
                    cursor = Cursor(cursor.epoch, applied.events[-1].seq)
                cursors[machine] = cursor
                results.append(applied)
            await self._write(rows, statements)
            await db.executemany(
                "INSERT INTO cursors (machine, epoch, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (machine) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
                [(machine, c.epoch, c.seq) for machine, c in cursors.items() if c.epoch],
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return results

    async def _cursors(self, machines: set[bytes]) -> dict[bytes, Cursor]:
        marks = ",".join("?" * len(machines))
        rows = await self.db.execute_fetchall(
            f"SELECT machine, epoch, seq FROM cursors WHERE machine IN ({marks})",
            tuple(machines),
        )
        return {bytes(row[0]): Cursor(row[1], row[2]) for row in rows}

    async def _write(
        self, rows: list[tuple[bytes, int, str, float, bytes]], statements: list[Statement]
    ) -> None:
        if rows:
            await self.db.executemany(
                "INSERT INTO events (machine, seq, session, at, body) VALUES (?,?,?,?,?)", rows
            )
        for statement in statements:
            await self.db.execute(*statement)

    async def _forget_machine_data(self, machine: bytes) -> None:
        for table in ("events", "sessions", "checkpoints"):
            await self.db.execute(f"DELETE FROM {table} WHERE machine = ?", (machine,))

    # --- reads ----------------------------------------------------------------------

    async def sessions(self, machine: bytes | None = None) -> list[SessionRow]:
        where, params = ("WHERE machine = ?", (machine,)) if machine else ("", ())
        rows = await self.db.execute_fetchall(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY created_at", params
        )
        return [_session(r) for r in rows]

    async def session(self, session_id: str) -> SessionRow | None:
        rows = list(
            await self.db.execute_fetchall(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            )
        )
        return _session(rows[0]) if rows else None

    async def session_events(self, session_id: str, *, after: int = 0) -> list[LoggedEvent]:
        rows = await self.db.execute_fetchall(
            "SELECT seq, at, session, body FROM events WHERE session = ? AND seq > ? ORDER BY seq",
            (session_id, after),
        )
        return [LoggedEvent(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def checkpoints(self, *, pending_only: bool = True) -> list[CheckpointRow]:
        where = "WHERE decision IS NULL" if pending_only else ""
        rows = await self.db.execute_fetchall(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints {where} ORDER BY created_at"
        )
        return [_checkpoint(r) for r in rows]

    async def checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        rows = list(
            await self.db.execute_fetchall(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = ?", (checkpoint_id,)
            )
        )
        return _checkpoint(rows[0]) if rows else None

    # --- outbox ---------------------------------------------------------------------

    async def enqueue(self, command_id: str, machine: bytes, kind: str, body: bytes) -> None:
        await self.db.execute(
            "INSERT INTO outbox (command_id, machine, kind, body, created_at) VALUES (?,?,?,?,?)",
            (command_id, machine, kind, body, time.time()),
        )

    async def pending(self, machine: bytes | None = None) -> list[OutboxCommand]:
        where = "WHERE acked_at IS NULL" + (" AND machine = ?" if machine else "")
        rows = await self.db.execute_fetchall(
            "SELECT command_id, machine, kind, body, created_at, acked_at, ok, error, hint, "
            f"result FROM outbox {where} ORDER BY created_at",
            (machine,) if machine else (),
        )
        return [_outbox(r) for r in rows]

    async def command(self, command_id: str) -> OutboxCommand | None:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT command_id, machine, kind, body, created_at, acked_at, ok, error, hint, "
                "result FROM outbox WHERE command_id = ?",
                (command_id,),
            )
        )
        return _outbox(rows[0]) if rows else None

    async def mark_sent(self, command_id: str) -> None:
        await self.db.execute(
            "UPDATE outbox SET sent_at = ? WHERE command_id = ?", (time.time(), command_id)
        )

    async def record_ack(self, ack: CommandAck) -> None:
        await self.db.execute(
            "UPDATE outbox SET acked_at = ?, ok = ?, error = ?, hint = ?, result = ? "
            "WHERE command_id = ? AND acked_at IS NULL",
            (time.time(), int(ack.ok), ack.error, ack.hint, ack.result, ack.command_id),
        )

    async def forget_machine(self, machine: bytes) -> None:
        for table in ("events", "sessions", "checkpoints", "outbox", "cursors"):
            await self.db.execute(f"DELETE FROM {table} WHERE machine = ?", (machine,))


Statement = tuple[str, tuple[Any, ...]]


def projection(machine: bytes, event: LoggedEvent) -> Statement | None:
    """The write that keeps the sessions and checkpoints tables up to date with
    ``event``, or None (output, a newer daemon's event kind: kept in the log only)."""
    try:
        message = APP.decode(event.body)
    except MessageError:
        return None
    if isinstance(message, SessionCreated):
        return (
            "INSERT OR IGNORE INTO sessions (id, machine, title, cwd, argv, status, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            (
                event.session,
                machine,
                message.title,
                message.cwd,
                msgpack.packb(list(message.argv)),
                event.at,
                event.at,
            ),
        )
    if isinstance(message, SessionStatusChanged):
        return (
            "UPDATE sessions SET status = ?, exit_code = ?, updated_at = ? WHERE id = ?",
            (message.status, message.exit_code, event.at, event.session),
        )
    if isinstance(message, CostReported):
        return (
            "UPDATE sessions SET input_tokens = input_tokens + ?, output_tokens = "
            "output_tokens + ?, usd = usd + ? WHERE id = ?",
            (message.input_tokens, message.output_tokens, message.usd, event.session),
        )
    if isinstance(message, CheckpointRaised):
        return (
            "INSERT OR IGNORE INTO checkpoints (id, machine, session, title, body, "
            "created_at, expires_at, default_approve) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.checkpoint,
                machine,
                event.session,
                message.title,
                message.body,
                event.at,
                message.expires_at,
                int(message.default_approve),
            ),
        )
    if isinstance(message, CheckpointDecided):
        return (
            "UPDATE checkpoints SET decision = ?, decided_by = ?, reason = ?, decided_at = ? "
            "WHERE id = ?",
            (message.decision, message.by, message.reason, message.decided_at, message.checkpoint),
        )
    return None


def _session(r: Any) -> SessionRow:
    argv = msgpack.unpackb(bytes(r[4]))
    return SessionRow(
        r[0], bytes(r[1]), r[2], r[3], list(argv), r[5], r[6], r[7], r[8], r[9], r[10], r[11]
    )


def _checkpoint(r: Any) -> CheckpointRow:
    return CheckpointRow(
        r[0],
        bytes(r[1]),
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        bool(r[7]),
        r[8],
        bytes(r[9]) if r[9] is not None else None,
        r[10],
    )


def _outbox(r: Any) -> OutboxCommand:
    return OutboxCommand(
        r[0],
        bytes(r[1]),
        r[2],
        bytes(r[3]),
        r[4],
        r[5] is not None,
        None if r[6] is None else bool(r[6]),
        r[7],
        r[8],
        r[9],
    )
