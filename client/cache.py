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
  idempotent on the machine. Only the machine it was sent to can ack it.
- Every session and checkpoint row is keyed by (machine, id): ids are chosen by
  machines (checkpoints) or known to them (sessions), so machine B's events never
  touch machine A's rows. A lookup by bare id prefers the machine the controller
  itself started the session on (the outbox says which); an id two machines claim
  otherwise is refused as ambiguous rather than guessed.
- An event whose body is a kind and version this code knows but does not validate
  (a bad id, status or time: a compromised machine) is refused: not stored, not
  projected, not reported; its seq is consumed so the sync moves on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import msgpack

from starmux import checkpoint_preview
from starmux.errors import MessageError, UsageError
from starmux.fingerprint import fingerprint
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
    StartSession,
)
from starmux.node.database import run_in_database
from starmux.node.loop_writer import LoopWriter, in_transaction
from starmux.resync import Applied as Applied
from starmux.resync import Cursor as Cursor
from starmux.resync import cursor_for, next_in_order
from starmux.review_messages import ApprovalRuleRemoved, ApprovalRuleSet

from .cursor_memo import CursorMemo

log = logging.getLogger("starmux.controller")

#: the cursor of a machine nothing was applied from yet
NO_CURSOR = Cursor("", 0)


class AmbiguousId(UsageError):
    """Two machines claim the same session or checkpoint id (one of them copied it)."""


@dataclass(frozen=True)
class AppliedPage(Applied):
    """:class:`~starmux.resync.Applied`, and the events refused (see module docstring)."""

    refused: tuple[int, ...] = ()  # seqs of invalid events: consumed, not applied
    #: the machine's cursor once this page was applied (committed with it)
    cursor: Cursor = field(default_factory=lambda: NO_CURSOR)


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
    preview: str | None = None  # JSON (starmux.checkpoint_preview.to_json)

    def preview_json(self) -> dict[str, Any] | None:
        """The stored preview, re-checked (the cache holds what a machine sent)."""
        if not self.preview:
            return None
        try:
            stored = checkpoint_preview.from_json(json.loads(self.preview))
        except (ValueError, UsageError):
            return None
        return checkpoint_preview.to_json(stored)


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
    "default_approve, decision, decided_by, reason, preview"
)


class Cache:
    """The controller's copy of its machines' logs. ``writer``: where page applies
    run (the live controller's; see :mod:`starmux.node.loop_writer`), else on
    ``db``'s thread."""

    def __init__(self, db: aiosqlite.Connection, writer: LoopWriter | None = None) -> None:
        self.db = db
        self.writer = writer
        self._cursors = CursorMemo()
        #: one apply at a time: the memo must see each commit before the next read
        self._applying = asyncio.Lock()

    async def cursor(self, machine: bytes) -> Cursor:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT epoch, seq FROM cursors WHERE machine = ?", (machine,)
            )
        )
        return Cursor(rows[0][0], rows[0][1]) if rows else NO_CURSOR

    async def apply_page(self, machine: bytes, page: EventPage) -> AppliedPage:
        return (await self.apply_pages([(machine, page)]))[0]

    async def apply_pages(self, pages: Sequence[tuple[bytes, EventPage]]) -> list[AppliedPage]:
        """Apply pages (of one or several machines, in arrival order) in one
        transaction; one :class:`Applied` per page.

        Group commit in one round trip: with many machines each streaming a little,
        the batches are small and per-batch costs dominate, and every aiosqlite call
        is a round trip to the database thread. So the whole transaction (cursors
        read, events and projections written, cursors advanced) is one function run
        on that thread. The write lock is held throughout, so cursors read at the
        start stay right for the whole batch."""
        if not pages:
            return []

        memo = self._cursors
        Work = tuple[list[AppliedPage], sqlite3.Connection, int, dict[bytes, Cursor]]

        def work(conn: sqlite3.Connection) -> Work:
            version, cursors = memo.read(conn, {machine for machine, _ in pages})
            return _apply_pages(conn, pages, cursors), conn, version, cursors

        async with self._applying:
            try:
                if self.writer is not None:
                    done = await self.writer.transaction(work)
                else:
                    done = await run_in_database(self.db, lambda conn: in_transaction(conn, work))
            except BaseException:
                memo.forget()  # rolled back, or unknown (cancelled on the thread)
                raise
            results, conn, version, cursors = done
            memo.committed(conn, version, cursors)
        return results

    # --- reads ----------------------------------------------------------------------

    async def sessions(self, machine: bytes | None = None) -> list[SessionRow]:
        where, params = ("WHERE machine = ?", (machine,)) if machine else ("", ())
        rows = await self.db.execute_fetchall(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY created_at", params
        )
        return [_session(r) for r in rows]

    async def session(self, session_id: str, machine: bytes | None = None) -> SessionRow | None:
        """The session ``session_id`` of ``machine`` (by default: the machine the id
        resolves to, see :meth:`session_machine`)."""
        if machine is None:
            machine = await self.session_machine(session_id)
            if machine is None:
                return None
        rows = list(
            await self.db.execute_fetchall(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE machine = ? AND id = ?",
                (machine, session_id),
            )
        )
        return _session(rows[0]) if rows else None

    async def session_machine(self, session_id: str) -> bytes | None:
        """Which machine a bare session id means: the one this controller started it
        on; else the only machine that reported it; None if none did.

        Raises :class:`AmbiguousId` if several machines claim it and none was sent it."""
        started = await self.db.execute_fetchall(
            "SELECT machine FROM outbox WHERE session = ? ORDER BY created_at LIMIT 1",
            (session_id,),
        )
        for (machine,) in started:
            return bytes(machine)
        for query in (
            "SELECT DISTINCT machine FROM sessions WHERE id = ?",
            "SELECT DISTINCT machine FROM events WHERE session = ?",
        ):
            machines = [bytes(r[0]) for r in await self.db.execute_fetchall(query, (session_id,))]
            if len(machines) == 1:
                return machines[0]
            if machines:
                raise AmbiguousId(
                    f"{len(machines)} machines claim the session id {session_id!r}",
                    hint="one of them copied the other's id: check `starmux sessions` "
                    "and revoke the machine that misbehaves",
                )
        return None

    async def session_events(
        self, session_id: str, *, after: int = 0, machine: bytes | None = None
    ) -> list[LoggedEvent]:
        """The stored events of one session of one machine (by default: the machine
        the id resolves to), in order: never another machine's events."""
        if machine is None:
            machine = await self.session_machine(session_id)
            if machine is None:
                return []
        rows = await self.db.execute_fetchall(
            "SELECT seq, at, session, body FROM events WHERE session = ? AND machine = ? "
            "AND seq > ? ORDER BY seq",
            (session_id, machine, after),
        )
        return [LoggedEvent(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def checkpoints(self, *, pending_only: bool = True) -> list[CheckpointRow]:
        where = "WHERE decision IS NULL" if pending_only else ""
        rows = await self.db.execute_fetchall(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints {where} ORDER BY created_at"
        )
        return [_checkpoint(r) for r in rows]

    async def checkpoint(
        self, checkpoint_id: str, machine: bytes | None = None
    ) -> CheckpointRow | None:
        """The checkpoint ``checkpoint_id`` of ``machine``, or of whichever machine
        holds it: if several do, the one raised in a session this controller started
        on that machine; else :class:`AmbiguousId`."""
        where: str
        params: tuple[object, ...]
        where, params = "WHERE id = ?", (checkpoint_id,)
        if machine is not None:
            where, params = "WHERE id = ? AND machine = ?", (checkpoint_id, machine)
        rows = [
            _checkpoint(r)
            for r in await self.db.execute_fetchall(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints {where}", params
            )
        ]
        if len(rows) > 1:
            started = [row for row in rows if await self._started_on(row.session, row.machine)]
            if len(started) != 1:
                raise AmbiguousId(
                    f"{len(rows)} machines claim the checkpoint id {checkpoint_id!r}",
                    hint="one of them copied the other's id: check `starmux approvals` "
                    "and revoke the machine that misbehaves",
                )
            rows = started
        return rows[0] if rows else None

    async def _started_on(self, session_id: str, machine: bytes) -> bool:
        rows = await self.db.execute_fetchall(
            "SELECT 1 FROM outbox WHERE session = ? AND machine = ? LIMIT 1",
            (session_id, machine),
        )
        return bool(list(rows))

    # --- outbox ---------------------------------------------------------------------

    async def enqueue(self, command_id: str, machine: bytes, kind: str, body: bytes) -> None:
        # The session a StartSession creates is recorded with it: it is how a bare
        # session id is known to mean this machine (see session_machine).
        command = APP.decode(body)
        session = command.session if isinstance(command, StartSession) else None
        await self.db.execute(
            "INSERT INTO outbox (command_id, machine, kind, body, created_at, session) "
            "VALUES (?,?,?,?,?,?)",
            (command_id, machine, kind, body, time.time(), session),
        )

    async def pending(self, machine: bytes | None = None) -> list[OutboxCommand]:
        where = "WHERE acked_at IS NULL" + (" AND machine = ?" if machine else "")
        rows = await self.db.execute_fetchall(
            "SELECT command_id, machine, kind, body, created_at, acked_at, ok, error, hint, "
            f"result FROM outbox {where} ORDER BY created_at",
            (machine,) if machine else (),
        )
        return [_outbox(r) for r in rows]

    async def command(self, command_id: str, machine: bytes | None = None) -> OutboxCommand | None:
        where: str
        params: tuple[object, ...]
        where, params = "command_id = ?", (command_id,)
        if machine is not None:
            where, params = "command_id = ? AND machine = ?", (command_id, machine)
        rows = list(
            await self.db.execute_fetchall(
                "SELECT command_id, machine, kind, body, created_at, acked_at, ok, error, hint, "
                f"result FROM outbox WHERE {where}",
                params,
            )
        )
        return _outbox(rows[0]) if rows else None

    async def mark_sent(self, command_id: str) -> None:
        await self.db.execute(
            "UPDATE outbox SET sent_at = ? WHERE command_id = ?", (time.time(), command_id)
        )

    async def record_ack(self, machine: bytes, ack: CommandAck) -> None:
        """Record ``machine``'s ack: only a command that was sent to it is acked."""
        await self.db.execute(
            "UPDATE outbox SET acked_at = ?, ok = ?, error = ?, hint = ?, result = ? "
            "WHERE command_id = ? AND machine = ? AND acked_at IS NULL",
            (time.time(), int(ack.ok), ack.error, ack.hint, ack.result, ack.command_id, machine),
        )

    async def forget_machine(self, machine: bytes) -> None:
        self._cursors.forget()  # written on db's connection: its data_version stays
        for table in ("events", "sessions", "checkpoints", "approval_rules", "outbox", "cursors"):
            await self.db.execute(f"DELETE FROM {table} WHERE machine = ?", (machine,))


Statement = tuple[str, tuple[Any, ...]]
EventRow = tuple[bytes, int, str, float, bytes]


def _apply_pages(
    conn: sqlite3.Connection,
    pages: Sequence[tuple[bytes, EventPage]],
    cursors: dict[bytes, Cursor],
) -> list[AppliedPage]:
    """:meth:`Cache.apply_pages`' statements, inside its transaction (the write
    lock is held throughout). ``cursors``: each machine's as committed (absent: none
    yet); updated here to what this transaction writes."""
    rows: list[EventRow] = []
    statements: list[Statement] = []
    results: list[AppliedPage] = []
    for machine, page in pages:
        cursor, wiped = cursor_for(cursors.get(machine, NO_CURSOR), page)
        if wiped:
            # The machine's log was wiped: what this batch queued for it goes
            # too (written first, so the delete sees it).
            _write(conn, rows, statements)
            rows, statements = [], []
            for table in ("events", "sessions", "checkpoints", "approval_rules"):
                conn.execute(f"DELETE FROM {table} WHERE machine = ?", (machine,))
        in_order = next_in_order(cursor.seq, page.events)
        kept: list[LoggedEvent] = []
        refused: list[int] = []
        for event in in_order.events:
            try:
                statement = projection(machine, event)
            except MessageError as exc:
                log.warning(
                    "warning: refused event %d from machine %s: %s",
                    event.seq,
                    fingerprint(machine) if len(machine) == 32 else machine.hex(),
                    exc.message,
                )
                refused.append(event.seq)
                continue
            kept.append(event)
            rows.append((machine, event.seq, event.session, event.at, event.body))
            if statement is not None:
                statements.append(statement)
        if in_order.events:
            cursor = Cursor(cursor.epoch, in_order.events[-1].seq)
        cursors[machine] = cursor
        results.append(AppliedPage(kept, in_order.gap, tuple(refused), cursor))
    _write(conn, rows, statements)
    conn.executemany(
        "INSERT INTO cursors (machine, epoch, seq) VALUES (?, ?, ?) "
        "ON CONFLICT (machine) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
        [(machine, c.epoch, c.seq) for machine, c in cursors.items() if c.epoch],
    )
    return results


def _write(conn: sqlite3.Connection, rows: list[EventRow], statements: list[Statement]) -> None:
    if rows:
        conn.executemany(
            "INSERT INTO events (machine, seq, session, at, body) VALUES (?,?,?,?,?)", rows
        )
    for statement in statements:
        conn.execute(*statement)


def projection(machine: bytes, event: LoggedEvent) -> Statement | None:
    """The write that keeps the sessions and checkpoints tables up to date with
    ``event``, or None (output, a newer daemon's event kind: kept in the log only).

    Raises :class:`MessageError` for an event this code should understand and cannot
    (a known kind and version that does not validate): the caller refuses it. Every
    write names the machine: an event changes only its own machine's rows."""
    try:
        message = APP.decode(event.body)
    except MessageError:
        if APP.understands(event.body):
            raise
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
            "UPDATE sessions SET status = ?, exit_code = ?, updated_at = ? "
            "WHERE machine = ? AND id = ?",
            (message.status, message.exit_code, event.at, machine, event.session),
        )
    if isinstance(message, CostReported):
        return (
            "UPDATE sessions SET input_tokens = input_tokens + ?, output_tokens = "
            "output_tokens + ?, usd = usd + ? WHERE machine = ? AND id = ?",
            (message.input_tokens, message.output_tokens, message.usd, machine, event.session),
        )
    if isinstance(message, CheckpointRaised):
        preview = message.preview
        return (
            "INSERT OR IGNORE INTO checkpoints (id, machine, session, title, body, "
            "created_at, expires_at, default_approve, preview) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.checkpoint,
                machine,
                event.session,
                message.title,
                message.body,
                event.at,
                message.expires_at,
                int(message.default_approve),
                None if preview is None else json.dumps(checkpoint_preview.to_json(preview)),
            ),
        )
    if isinstance(message, ApprovalRuleSet):
        return (
            "INSERT OR IGNORE INTO approval_rules (machine, id, session, pattern, effect, "
            "set_by, set_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                machine,
                message.rule,
                event.session,
                message.pattern,
                message.effect,
                message.by,
                event.at,
            ),
        )
    if isinstance(message, ApprovalRuleRemoved):
        return (
            "UPDATE approval_rules SET removed_at = ?, removed_by = ? "
            "WHERE machine = ? AND id = ? AND removed_at IS NULL",
            (event.at, message.by, machine, message.rule),
        )
    if isinstance(message, CheckpointDecided):
        return (
            "UPDATE checkpoints SET decision = ?, decided_by = ?, reason = ?, decided_at = ? "
            "WHERE machine = ? AND id = ?",
            (
                message.decision,
                message.by,
                message.reason,
                message.decided_at,
                machine,
                message.checkpoint,
            ),
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
        r[11],
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
