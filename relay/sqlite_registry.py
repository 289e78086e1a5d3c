"""The embedded relay registry: :class:`relay.registry.Registry` on one SQLite file.

One aiosqlite connection per registry, in autocommit mode, with every write in an
explicit ``BEGIN IMMEDIATE`` transaction: the write lock is taken before the first
read, so a check ("is the ticket still free?") and the write that depends on it
cannot be interleaved with another connection's, even across processes.

A single connection is shared by every coroutine of the relay, so an asyncio lock
serialises whole operations on it: without it two coroutines would try to nest
``BEGIN`` on the same connection, and a reader could see another coroutine's
half-done transaction.

Refusals are decided by reads *before* the first write of an operation, and any
exception rolls the whole transaction back, so a refused or failed operation
leaves the file exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite

from starmux.control import FailureCode
from starmux.errors import UsageError
from starmux.node.database import open_database
from starmux.relay.registry import (
    AuditEntry,
    ControllerRecord,
    DeviceChange,
    DeviceLogRow,
    MachineRecord,
    PushSubscription,
    RegistryError,
    TicketRecord,
)
from starmux.relay.registry_rows import (
    SELECT_CONTROLLER,
    SELECT_MACHINE,
    TICKET_COLUMNS,
    check_link_ticket,
    check_usable_ticket,
    controller_record,
    machine_record,
    ticket_record,
)

__all__ = ["SqliteRegistry"]


_SELECT_TICKET = f"SELECT {TICKET_COLUMNS} FROM tickets WHERE ticket = ?"


_TOUCH = tuple(
    f"UPDATE {table} SET last_seen = max(coalesce(last_seen, ?), ?) WHERE key = ?"
    for table in ("machines", "controllers")
)


class SqliteRegistry:
    """The registry in one SQLite file (WAL). See :class:`relay.registry.Registry`.

    ``ticket_retention``: how long an expired, unused ticket is kept (so that a
    late controller hears ``expired`` rather than ``unknown-ticket``) before
    :meth:`create_ticket` drops it; bounds the table without a background job.
    """

    def __init__(self, path: pathlib.Path, *, ticket_retention: float = 24 * 3600.0) -> None:
        self._path = path
        self._ticket_retention = ticket_retention
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # --- connection --------------------------------------------------------------
    async def open(self) -> None:
        if self._db is not None:
            raise UsageError("registry is already open")
        self._db = await open_database(self._path, "starmux.relay")

    async def close(self) -> None:
        async with self._lock:  # let an operation in flight finish first
            if self._db is not None:
                db, self._db = self._db, None
                await db.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise UsageError("registry is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            yield self._connection()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self._connection()
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back by itself (disk full, I/O).
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    @staticmethod
    async def _one(db: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> Any:
        async with db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    @classmethod
    async def _refuse_known(cls, db: aiosqlite.Connection, machine_key: bytes) -> None:
        if await cls._one(db, "SELECT 1 FROM revocations WHERE key = ?", (machine_key,)):
            raise RegistryError(FailureCode.REVOKED, "this machine was revoked")
        if await cls._one(db, "SELECT 1 FROM machines WHERE key = ?", (machine_key,)):
            raise RegistryError(FailureCode.PAIRED, "this machine is already paired")

    @staticmethod
    async def _audit(
        db: aiosqlite.Connection, event: str, actor: bytes, subject: bytes, detail: str, now: float
    ) -> None:
        await db.execute(
            "INSERT INTO audit_log (at, event, actor, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (now, event, actor, subject, detail),
        )

    # --- registration ------------------------------------------------------------
    async def has_accounts(self) -> bool:
        async with self._reading() as db:
            row = await self._one(db, "SELECT EXISTS (SELECT 1 FROM accounts)", ())
        return bool(row[0])

    async def add_registration_token(self, token_hash: bytes, *, now: float) -> None:
        async with self._transaction() as db:
            sql = "SELECT 1 FROM registration_tokens WHERE token_hash = ?"
            if await self._one(db, sql, (token_hash,)) is not None:
                raise RegistryError(FailureCode.EXISTS, "this registration token is already stored")
            await db.execute(
                "INSERT INTO registration_tokens (token_hash, created_at) VALUES (?, ?)",
                (token_hash, now),
            )

    async def add_first_registration_token(self, token_hash: bytes, *, now: float) -> bool:
        async with self._transaction() as db:
            sql = (
                "SELECT EXISTS (SELECT 1 FROM accounts)"
                " OR EXISTS (SELECT 1 FROM registration_tokens WHERE used_at IS NULL)"
            )
            if (await self._one(db, sql, ()))[0]:
                return False
            await db.execute(
                "INSERT INTO registration_tokens (token_hash, created_at) VALUES (?, ?)",
                (token_hash, now),
            )
        return True

    async def create_account(
        self,
        *,
        controller_key: bytes,
        controller_card: bytes,
        account: bytes,
        token_hash: bytes | None,
        now: float,
    ) -> ControllerRecord:
        async with self._transaction() as db:
            # The token first: without a valid one, learn nothing about which keys exist.
            if token_hash is not None:
                sql = "SELECT used_at FROM registration_tokens WHERE token_hash = ?"
                row = await self._one(db, sql, (token_hash,))
                if row is None or row[0] is not None:
                    raise RegistryError(
                        FailureCode.BAD_TOKEN, "unknown or already used registration token"
                    )
            if await self._one(db, "SELECT 1 FROM controllers WHERE key = ?", (controller_key,)):
                raise RegistryError(FailureCode.EXISTS, "this controller key is already registered")
            if await self._one(db, "SELECT 1 FROM accounts WHERE id = ?", (account,)):
                raise RegistryError(FailureCode.EXISTS, "this account id is already taken")
            await db.execute("INSERT INTO accounts (id, created_at) VALUES (?, ?)", (account, now))
            await db.execute(
                "INSERT INTO controllers (key, account, card, created_at) VALUES (?, ?, ?, ?)",
                (controller_key, account, controller_card, now),
            )
            if token_hash is not None:
                await db.execute(
                    "UPDATE registration_tokens SET used_at = ?, used_by = ? WHERE token_hash = ?",
                    (now, controller_key, token_hash),
                )
            how = "open registration" if token_hash is None else "registration token"
            await self._audit(db, "account.created", controller_key, account, how, now)
        return ControllerRecord(controller_key, account, controller_card, now)

    async def controller(self, key: bytes) -> ControllerRecord | None:
        async with self._reading() as db:
            row = await self._one(db, SELECT_CONTROLLER + " AND key = ?", (key,))
        return None if row is None else controller_record(row)

    async def controllers_of(self, account: bytes) -> list[ControllerRecord]:
        sql = SELECT_CONTROLLER + " AND account = ? ORDER BY created_at, rowid"
        async with self._reading() as db:
            rows = await db.execute_fetchall(sql, (account,))
        return [controller_record(row) for row in rows]

    # --- tickets -----------------------------------------------------------------
    async def create_ticket(
        self, *, ticket: bytes, machine_key: bytes, machine_card: bytes, now: float, ttl: float
    ) -> TicketRecord:
        if ttl <= 0:
            raise UsageError(f"ticket ttl must be positive, not {ttl}")
        async with self._transaction() as db:
            await self._refuse_known(db, machine_key)
            # One live ticket per machine, and stale ones of any machine go too.
            await db.execute(
                "DELETE FROM tickets WHERE consumed_at IS NULL"
                " AND (machine_key = ? OR expires_at <= ?)",
                (machine_key, now - self._ticket_retention),
            )
            if await self._one(db, "SELECT 1 FROM tickets WHERE ticket = ?", (ticket,)):
                raise RegistryError(FailureCode.EXISTS, "this ticket id is already in use")
            await db.execute(
                "INSERT INTO tickets (ticket, machine_key, machine_card, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (ticket, machine_key, machine_card, now, now + ttl),
            )
        return TicketRecord(ticket, machine_key, machine_card, now, now + ttl, 0, None, None)

    async def open_ticket(
        self, ticket: bytes, *, controller_key: bytes, now: float
    ) -> TicketRecord:
        """First controller wins; the same controller may open again (a retry)."""
        async with self._transaction() as db:
            row = await self._one(db, _SELECT_TICKET, (ticket,))
            check_usable_ticket(row, now)
            if row[6] is not None and bytes(row[6]) != controller_key:
                raise RegistryError(
                    FailureCode.TAKEN, "another controller is pairing with this ticket"
                )
            if row[6] is None:
                await db.execute(
                    "UPDATE tickets SET opened_by = ? WHERE ticket = ?", (controller_key, ticket)
                )
        return dataclasses.replace(ticket_record(row), opened_by=controller_key)

    async def record_ticket_failure(self, ticket: bytes, *, max_failures: int) -> int:
        if max_failures < 1:
            raise UsageError(f"max_failures must be at least 1, not {max_failures}")
        async with self._transaction() as db:
            # In SET, `failures` is the old value on both sides: one atomic step.
            cursor = await db.execute(
                "UPDATE tickets SET failures = failures + 1,"
                " burnt = (burnt OR failures + 1 >= ?) WHERE ticket = ?",
                (max_failures, ticket),
            )
            if cursor.rowcount == 0:
                return 0
            row = await self._one(db, "SELECT failures FROM tickets WHERE ticket = ?", (ticket,))
        return int(row[0])

    async def grant_machine(
        self,
        *,
        ticket: bytes,
        account: bytes,
        granted_by: bytes,
        machine_card: bytes,
        machine_key: bytes,
        grant_signature: bytes,
        grant_issued_at: float,
        now: float,
    ) -> MachineRecord:
        async with self._transaction() as db:
            row = await self._one(db, _SELECT_TICKET, (ticket,))
            check_usable_ticket(row, now)
            # Before comparing contents, so a controller that did not open the
            # ticket learns nothing about the machine behind it.
            if row[6] is None or bytes(row[6]) != granted_by:
                raise RegistryError(FailureCode.TAKEN, "this ticket is not open by this controller")
            if bytes(row[1]) != machine_key or bytes(row[2]) != machine_card:
                raise RegistryError(
                    FailureCode.MISMATCH, "the grant is not for this ticket's machine"
                )
            sql = "SELECT account FROM controllers WHERE key = ?"
            grantor = await self._one(db, sql, (granted_by,))
            if grantor is None or bytes(grantor[0]) != account:
                raise RegistryError(
                    FailureCode.MISMATCH, "the granting controller is not in this account"
                )
            # Unreachable through create_ticket, which refuses both; guards the
            # invariants against rows written some other way.
            await self._refuse_known(db, machine_key)
            await db.execute("UPDATE tickets SET consumed_at = ? WHERE ticket = ?", (now, ticket))
            grant = (machine_key, account, machine_card, granted_by, grant_signature)
            await db.execute(
                "INSERT INTO machines (key, account, card, granted_by, grant_signature,"
                " grant_issued_at, paired_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*grant, grant_issued_at, now),
            )
            await self._audit(
                db, "machine.granted", granted_by, machine_key, f"account {account.hex()}", now
            )
            row = await self._one(db, SELECT_MACHINE + " WHERE m.key = ?", (machine_key,))
        return machine_record(row)

    # --- machines ----------------------------------------------------------------
    async def machine(self, key: bytes) -> MachineRecord | None:
        async with self._reading() as db:
            row = await self._one(db, SELECT_MACHINE + " WHERE m.key = ?", (key,))
        return None if row is None else machine_record(row)

    async def machines_of(self, account: bytes) -> list[MachineRecord]:
        sql = (
            SELECT_MACHINE + " WHERE m.account = ? AND r.key IS NULL ORDER BY m.paired_at, m.rowid"
        )
        async with self._reading() as db:
            rows = await db.execute_fetchall(sql, (account,))
        return [machine_record(row) for row in rows]

    async def is_revoked(self, key: bytes) -> bool:
        async with self._reading() as db:
            row = await self._one(db, "SELECT 1 FROM revocations WHERE key = ?", (key,))
        return row is not None

    async def revoke_machine(
        self, key: bytes, *, account: bytes, by: bytes, now: float, proof: bytes | None = None
    ) -> bool:
        """Idempotent: revoking again returns True and keeps the first time and author."""
        async with self._transaction() as db:
            sql = "SELECT 1 FROM machines WHERE key = ? AND account = ?"
            if await self._one(db, sql, (key, account)) is None:
                return False
            if await self._one(db, "SELECT 1 FROM revocations WHERE key = ?", (key,)):
                return True
            await db.execute(
                "INSERT INTO revocations (key, revoked_at, account, revoked_by, proof)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, now, account, by, proof),
            )
            await self._audit(db, "machine.revoked", by, key, f"account {account.hex()}", now)
        return True

    async def revocation_proofs(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Which of ``keys`` are revoked, each with its stored proof (b"" if none)."""
        found: dict[bytes, bytes] = {}
        async with self._reading() as db:
            for key in keys:
                row = await self._one(db, "SELECT proof FROM revocations WHERE key = ?", (key,))
                if row is not None:
                    found[key] = bytes(row[0] or b"")
        return found

    async def touch(self, key: bytes, *, now: float) -> None:
        """Never moves ``last_seen`` backwards (touches may arrive out of order); a
        key is a machine's or a device's, so one of the two updates finds it."""
        async with self._transaction() as db:
            for sql in _TOUCH:
                await db.execute(sql, (now, now, key))

    # --- device logs ---------------------------------------------------------------
    async def device_log(self, account: bytes) -> list[DeviceLogRow]:
        sql = "SELECT seq, hash, entry, author, at FROM device_log WHERE account = ? ORDER BY seq"
        async with self._reading() as db:
            rows = await db.execute_fetchall(sql, (account,))
        return [
            DeviceLogRow(int(r[0]), bytes(r[1]), bytes(r[2]), bytes(r[3]), float(r[4]))
            for r in rows
        ]

    async def append_device_log(
        self,
        account: bytes,
        *,
        after_seq: int,
        rows: list[DeviceLogRow],
        change: DeviceChange,
        by: bytes,
        now: float,
        link_ticket: bytes | None = None,
    ) -> None:
        async with self._transaction() as db:
            sql = "SELECT coalesce(max(seq), -1) FROM device_log WHERE account = ?"
            (head,) = await self._one(db, sql, (account,))
            if head != after_seq:
                raise RegistryError(
                    FailureCode.LOG_MOVED,
                    "the device log changed meanwhile",
                    hint="run the command again",
                )
            if link_ticket is not None:
                row = await self._one(db, _SELECT_TICKET, (link_ticket,))
                check_link_ticket(row, now, by=by, change=change)
                await db.execute(
                    "UPDATE tickets SET consumed_at = ? WHERE ticket = ?", (now, link_ticket)
                )
            await db.executemany(
                "INSERT INTO device_log (account, seq, hash, entry, author, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(account, r.seq, r.hash, r.entry, r.author, r.at) for r in rows],
            )
            for record in change.added:
                await db.execute(
                    "INSERT OR IGNORE INTO controllers (key, account, card, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (record.key, account, record.card, record.created_at),
                )
                await self._audit(db, "device.added", by, record.key, "", now)
            for key in change.removed:
                await db.execute(
                    "INSERT OR IGNORE INTO removed_devices (key, account, removed_at, removed_by)"
                    " VALUES (?, ?, ?, ?)",
                    (key, account, now, by),
                )
                await self._audit(db, "device.removed", by, key, "", now)
            detail = f"entries {rows[0].seq}..{rows[-1].seq}" if rows else "no entries"
            await self._audit(db, "device-log.appended", by, account, detail, now)

    async def is_removed_device(self, key: bytes) -> bool:
        async with self._reading() as db:
            row = await self._one(db, "SELECT 1 FROM removed_devices WHERE key = ?", (key,))
        return row is not None

    # --- Web Push ----------------------------------------------------------------
    async def set_push_subscription(self, subscription: PushSubscription) -> None:
        s = subscription
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO push_subscriptions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device) "
                "DO UPDATE SET account = excluded.account, endpoint = excluded.endpoint, "
                "p256dh = excluded.p256dh, auth = excluded.auth, "
                "registered_at = excluded.registered_at",
                (s.device, s.account, s.endpoint, s.p256dh, s.auth, s.registered_at),
            )

    async def push_subscription(self, device: bytes, account: bytes) -> PushSubscription | None:
        async with self._reading() as db:
            row = await self._one(
                db,
                "SELECT endpoint, p256dh, auth, registered_at FROM push_subscriptions "
                "WHERE device = ? AND account = ?",
                (device, account),
            )
        if row is None:
            return None
        return PushSubscription(device, account, row[0], bytes(row[1]), bytes(row[2]), row[3])

    async def forget_push_subscription(self, device: bytes, *, endpoint: str = "") -> None:
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM push_subscriptions WHERE device = ? AND (? = '' OR endpoint = ?)",
                (device, endpoint, endpoint),
            )

    # --- audit -------------------------------------------------------------------
    async def audit(
        self, event: str, *, actor: bytes, subject: bytes, detail: str, now: float
    ) -> None:
        async with self._transaction() as db:
            await self._audit(db, event, actor, subject, detail, now)

    async def audit_log(self, *, limit: int = 100) -> list[AuditEntry]:
        """Newest first, by order of writing (``at`` comes from callers' clocks)."""
        if limit < 0:
            raise UsageError(f"limit must not be negative, not {limit}")
        sql = "SELECT at, event, actor, subject, detail FROM audit_log ORDER BY id DESC LIMIT ?"
        async with self._reading() as db:
            rows = await db.execute_fetchall(sql, (limit,))
        return [
            AuditEntry(float(r[0]), str(r[1]), bytes(r[2]), bytes(r[3]), str(r[4])) for r in rows
        ]
