"""The clustered relay registry: :class:`relay.registry.Registry` on PostgreSQL (asyncpg).

Same semantics and invariants as :class:`relay.sqlite_registry.SqliteRegistry`
(the same test suite runs against both). How they are kept here:

- Every operation that reads before it writes (create an account, open or grant a
  ticket, revoke) is one transaction that first takes a transaction-scoped
  advisory lock (:data:`WRITE_LOCK`). That serialises those operations across all
  nodes exactly as ``BEGIN IMMEDIATE`` serialises them on one SQLite file, so
  "is the ticket still free?" and the write that depends on it cannot interleave
  with another node's. They are rare (pairing, registration, revocation); the
  frequent single-statement writes (``touch``, ticket failures, audit
  lines) are atomic on their own and do not take the lock.
- Refusals are decided by reads before the first write, and any exception rolls
  the whole transaction back, so a refused or failed operation changes nothing.
- A lost or unreachable server surfaces as ``RegistryError("unavailable")`` (the
  endpoint answers it like any refusal) instead of a driver exception.

``schema`` (optional) puts the tables in their own PostgreSQL schema via
``search_path``: several relays (or test runs) can share one database.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import asyncpg

from starmux.control import FailureCode
from starmux.errors import UsageError
from starmux.relay.pg_schema import Connection, migrate, redact_url
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

__all__ = ["WRITE_LOCK", "PostgresRegistry", "Revocation"]

#: Advisory lock id that serialises multi-step writes (b"stmxregw", signed 64-bit).
WRITE_LOCK = int.from_bytes(b"stmxregw", "big", signed=True)

_SELECT_TICKET = f"SELECT {TICKET_COLUMNS} FROM tickets WHERE ticket = $1"
_TOUCH = tuple(
    f"UPDATE {table} SET last_seen = GREATEST(coalesce(last_seen, $1), $1) WHERE key = $2"
    for table in ("machines", "controllers")
)
_UNREACHABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
_UNREACHABLE_OPERATOR = (
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


@dataclasses.dataclass(frozen=True)
class Revocation:
    seq: int  # increasing in commit order of the insert; a reader's resume point
    key: bytes
    account: bytes


@contextlib.contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except (*_UNREACHABLE, *_UNREACHABLE_OPERATOR) as exc:
        raise RegistryError(
            FailureCode.UNAVAILABLE,
            f"the relay registry (PostgreSQL at {redact_url(url)}) is unreachable:"
            f" {type(exc).__name__}: {exc}"[:300],
            hint="try again; the relay operator should check PostgreSQL",
        ) from exc


class PostgresRegistry:
    """See the module docstring and :class:`relay.registry.Registry`."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        schema: str | None = None,
        ticket_retention: float = 24 * 3600.0,
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self._schema = schema
        self._ticket_retention = ticket_retention
        self._pool: asyncpg.Pool | None = None
        #: Called with (key, account, proof) after a new revocation is committed: the
        #: cluster appends it to the bus's stream (PostgreSQL first, then the bus).
        self.on_revoked: Callable[[bytes, bytes, bytes], Awaitable[None]] | None = None
        #: Called with (key, account) for each device a committed log append removed:
        #: the cluster appends it to the same stream (a removed device on another
        #: node is cut off there, even if this node never saw it connected).
        self.on_device_removed: Callable[[bytes, bytes], Awaitable[None]] | None = None

    # --- connection --------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            raise UsageError("registry is already open")
        settings = {"search_path": self._schema} if self._schema else {}
        with _translated(self._url):
            pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                server_settings=settings,
                # The pool re-connects by itself; a stuck server must not stall a
                # request for ever.
                timeout=10.0,
                command_timeout=30.0,
            )
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise UsageError("registry is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[Connection]:
        pool = self._open_pool()
        with _translated(self._url):
            async with pool.acquire() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        pool = self._open_pool()
        with _translated(self._url):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                yield conn

    async def ping(self) -> None:
        """One round trip to the server; raises ``RegistryError("unavailable")``."""
        async with self._reading() as conn:
            await conn.fetchval("SELECT 1")

    @staticmethod
    async def _refuse_known(conn: Connection, machine_key: bytes) -> None:
        if await conn.fetchval("SELECT 1 FROM revocations WHERE key = $1", machine_key):
            raise RegistryError(FailureCode.REVOKED, "this machine was revoked")
        if await conn.fetchval("SELECT 1 FROM machines WHERE key = $1", machine_key):
            raise RegistryError(FailureCode.PAIRED, "this machine is already paired")

    @staticmethod
    async def _audit(
        conn: Connection,
        event: str,
        actor: bytes,
        subject: bytes,
        detail: str,
        now: float,
    ) -> None:
        await conn.execute(
            "INSERT INTO audit_log (at, event, actor, subject, detail) VALUES ($1, $2, $3, $4, $5)",
            now, event, actor, subject, detail,
        )  # fmt: skip

    # --- registration ------------------------------------------------------------
    async def has_accounts(self) -> bool:
        async with self._reading() as conn:
            return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM accounts)"))

    async def add_registration_token(self, token_hash: bytes, *, now: float) -> None:
        async with self._transaction() as conn:
            sql = "SELECT 1 FROM registration_tokens WHERE token_hash = $1"
            if await conn.fetchval(sql, token_hash) is not None:
                raise RegistryError(FailureCode.EXISTS, "this registration token is already stored")
            await conn.execute(
                "INSERT INTO registration_tokens (token_hash, created_at) VALUES ($1, $2)",
                token_hash, now,
            )  # fmt: skip

    async def add_first_registration_token(self, token_hash: bytes, *, now: float) -> bool:
        """Store the token only if there is no account and no unused token yet: of
        several nodes starting on an empty registry, exactly one gets True."""
        async with self._transaction() as conn:
            if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM accounts)"
                " OR EXISTS (SELECT 1 FROM registration_tokens WHERE used_at IS NULL)"
            ):
                return False
            await conn.execute(
                "INSERT INTO registration_tokens (token_hash, created_at) VALUES ($1, $2)",
                token_hash, now,
            )  # fmt: skip
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
        async with self._transaction() as conn:
            # The token first: without a valid one, learn nothing about which keys exist.
            if token_hash is not None:
                sql = "SELECT used_at FROM registration_tokens WHERE token_hash = $1"
                row = await conn.fetchrow(sql, token_hash)
                if row is None or row[0] is not None:
                    raise RegistryError(
                        FailureCode.BAD_TOKEN, "unknown or already used registration token"
                    )
            if await conn.fetchval("SELECT 1 FROM controllers WHERE key = $1", controller_key):
                raise RegistryError(FailureCode.EXISTS, "this controller key is already registered")
            if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account):
                raise RegistryError(FailureCode.EXISTS, "this account id is already taken")
            await conn.execute(
                "INSERT INTO accounts (id, created_at) VALUES ($1, $2)", account, now
            )
            await conn.execute(
                "INSERT INTO controllers (key, account, card, created_at) VALUES ($1, $2, $3, $4)",
                controller_key, account, controller_card, now,
            )  # fmt: skip
            if token_hash is not None:
                await conn.execute(
                    "UPDATE registration_tokens SET used_at = $1, used_by = $2"
                    " WHERE token_hash = $3",
                    now, controller_key, token_hash,
                )  # fmt: skip
            how = "open registration" if token_hash is None else "registration token"
            await self._audit(conn, "account.created", controller_key, account, how, now)
        return ControllerRecord(controller_key, account, controller_card, now)

    async def controller(self, key: bytes) -> ControllerRecord | None:
        async with self._reading() as conn:
            row = await conn.fetchrow(SELECT_CONTROLLER + " AND key = $1", key)
        return None if row is None else controller_record(row)

    async def controllers_of(self, account: bytes) -> list[ControllerRecord]:
        sql = SELECT_CONTROLLER + " AND account = $1 ORDER BY created_at, seq"
        async with self._reading() as conn:
            rows = await conn.fetch(sql, account)
        return [controller_record(row) for row in rows]

    # --- tickets -----------------------------------------------------------------
    async def create_ticket(
        self, *, ticket: bytes, machine_key: bytes, machine_card: bytes, now: float, ttl: float
    ) -> TicketRecord:
        if ttl <= 0:
            raise UsageError(f"ticket ttl must be positive, not {ttl}")
        async with self._transaction() as conn:
            await self._refuse_known(conn, machine_key)
            # One live ticket per machine, and stale ones of any machine go too.
            await conn.execute(
                "DELETE FROM tickets WHERE consumed_at IS NULL"
                " AND (machine_key = $1 OR expires_at <= $2)",
                machine_key, now - self._ticket_retention,
            )  # fmt: skip
            if await conn.fetchval("SELECT 1 FROM tickets WHERE ticket = $1", ticket):
                raise RegistryError(FailureCode.EXISTS, "this ticket id is already in use")
            await conn.execute(
                "INSERT INTO tickets (ticket, machine_key, machine_card, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                ticket, machine_key, machine_card, now, now + ttl,
            )  # fmt: skip
        return TicketRecord(ticket, machine_key, machine_card, now, now + ttl, 0, None, None)

    async def open_ticket(
        self, ticket: bytes, *, controller_key: bytes, now: float
    ) -> TicketRecord:
        """First controller wins; the same controller may open again (a retry)."""
        async with self._transaction() as conn:
            row = await conn.fetchrow(_SELECT_TICKET, ticket)
            check_usable_ticket(row, now)
            assert row is not None
            if row[6] is not None and bytes(row[6]) != controller_key:
                raise RegistryError(
                    FailureCode.TAKEN, "another controller is pairing with this ticket"
                )
            if row[6] is None:
                await conn.execute(
                    "UPDATE tickets SET opened_by = $1 WHERE ticket = $2", controller_key, ticket
                )
        return dataclasses.replace(ticket_record(row), opened_by=controller_key)

    async def record_ticket_failure(self, ticket: bytes, *, max_failures: int) -> int:
        if max_failures < 1:
            raise UsageError(f"max_failures must be at least 1, not {max_failures}")
        async with self._reading() as conn:
            # One statement: atomic without the write lock. In SET, `failures` is
            # the old value on both sides.
            failures = await conn.fetchval(
                "UPDATE tickets SET failures = failures + 1,"
                " burnt = (burnt OR failures + 1 >= $1) WHERE ticket = $2 RETURNING failures",
                max_failures, ticket,
            )  # fmt: skip
        return 0 if failures is None else int(failures)

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
        async with self._transaction() as conn:
            row = await conn.fetchrow(_SELECT_TICKET, ticket)
            check_usable_ticket(row, now)
            assert row is not None
            # Before comparing contents, so a controller that did not open the
            # ticket learns nothing about the machine behind it.
            if row[6] is None or bytes(row[6]) != granted_by:
                raise RegistryError(FailureCode.TAKEN, "this ticket is not open by this controller")
            if bytes(row[1]) != machine_key or bytes(row[2]) != machine_card:
                raise RegistryError(
                    FailureCode.MISMATCH, "the grant is not for this ticket's machine"
                )
            grantor = await conn.fetchval(
                "SELECT account FROM controllers WHERE key = $1", granted_by
            )
            if grantor is None or bytes(grantor) != account:
                raise RegistryError(
                    FailureCode.MISMATCH, "the granting controller is not in this account"
                )
            await self._refuse_known(conn, machine_key)
            await conn.execute("UPDATE tickets SET consumed_at = $1 WHERE ticket = $2", now, ticket)
            await conn.execute(
                "INSERT INTO machines (key, account, card, granted_by, grant_signature,"
                " grant_issued_at, paired_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                machine_key, account, machine_card, granted_by, grant_signature,
                grant_issued_at, now,
            )  # fmt: skip
            await self._audit(
                conn, "machine.granted", granted_by, machine_key, f"account {account.hex()}", now
            )
            record = await conn.fetchrow(SELECT_MACHINE + " WHERE m.key = $1", machine_key)
        return machine_record(record)

    # --- machines ----------------------------------------------------------------
    async def machine(self, key: bytes) -> MachineRecord | None:
        async with self._reading() as conn:
            row = await conn.fetchrow(SELECT_MACHINE + " WHERE m.key = $1", key)
        return None if row is None else machine_record(row)

    async def machines_of(self, account: bytes) -> list[MachineRecord]:
        sql = SELECT_MACHINE + " WHERE m.account = $1 AND r.key IS NULL ORDER BY m.paired_at, m.seq"
        async with self._reading() as conn:
            rows = await conn.fetch(sql, account)
        return [machine_record(row) for row in rows]

    async def is_revoked(self, key: bytes) -> bool:
        async with self._reading() as conn:
            return await conn.fetchval("SELECT 1 FROM revocations WHERE key = $1", key) is not None

    async def revoke_machine(
        self, key: bytes, *, account: bytes, by: bytes, now: float, proof: bytes | None = None
    ) -> bool:
        """Idempotent: revoking again returns True and keeps the first time and author."""
        async with self._transaction() as conn:
            sql = "SELECT 1 FROM machines WHERE key = $1 AND account = $2"
            if await conn.fetchval(sql, key, account) is None:
                return False
            if await conn.fetchval("SELECT 1 FROM revocations WHERE key = $1", key):
                return True
            await conn.execute(
                "INSERT INTO revocations (key, revoked_at, account, revoked_by, proof)"
                " VALUES ($1, $2, $3, $4, $5)",
                key, now, account, by, proof,
            )  # fmt: skip
            await self._audit(conn, "machine.revoked", by, key, f"account {account.hex()}", now)
        if self.on_revoked is not None:
            await self.on_revoked(key, account, proof or b"")
        return True

    async def revocations_after(self, seq: int, *, limit: int = 1000) -> list[Revocation]:
        """Revocations written after ``seq`` (0: all), oldest first. What a node reads
        from the truth when the bus may have lost stream entries."""
        async with self._reading() as conn:
            rows = await conn.fetch(
                "SELECT seq, key, account FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
                seq, limit,
            )  # fmt: skip
        return [Revocation(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    async def revocation_proofs(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Which of ``keys`` are revoked, each with its stored proof (b"" if none): one
        query for every machine a node holds."""
        if not keys:
            return {}
        async with self._reading() as conn:
            rows = await conn.fetch(
                "SELECT key, proof FROM revocations WHERE key = ANY($1::bytea[])", list(keys)
            )
        return {bytes(r[0]): bytes(r[1] or b"") for r in rows}

    async def touch(self, key: bytes, *, now: float) -> None:
        """Never moves ``last_seen`` backwards (touches may arrive out of order); a
        key is a machine's or a device's, so one of the two updates finds it."""
        async with self._reading() as conn:
            for sql in _TOUCH:
                await conn.execute(sql, now, key)

    # --- device logs -------------------------------------------------------------
    async def device_logs_changed_since(self, accounts: Sequence[bytes], at: float) -> set[bytes]:
        """Which of ``accounts`` had device log entries written at or after ``at``
        (one query for every account with a device on a node)."""
        if not accounts:
            return set()
        sql = (
            "SELECT DISTINCT account FROM device_log WHERE account = ANY($1::bytea[]) AND at >= $2"
        )
        async with self._reading() as conn:
            rows = await conn.fetch(sql, list(accounts), at)
        return {bytes(r[0]) for r in rows}

    async def device_log(self, account: bytes) -> list[DeviceLogRow]:
        sql = "SELECT seq, hash, entry, author, at FROM device_log WHERE account = $1 ORDER BY seq"
        async with self._reading() as conn:
            rows = await conn.fetch(sql, account)
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
        async with self._transaction() as conn:
            sql = "SELECT coalesce(max(seq), -1) FROM device_log WHERE account = $1"
            if int(await conn.fetchval(sql, account)) != after_seq:
                raise RegistryError(
                    FailureCode.LOG_MOVED,
                    "the device log changed meanwhile",
                    hint="run the command again",
                )
            if link_ticket is not None:
                row = await conn.fetchrow(_SELECT_TICKET, link_ticket)
                check_link_ticket(row, now, by=by, change=change)
                await conn.execute(
                    "UPDATE tickets SET consumed_at = $1 WHERE ticket = $2", now, link_ticket
                )
            await conn.executemany(
                "INSERT INTO device_log (account, seq, hash, entry, author, at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                [(account, r.seq, r.hash, r.entry, r.author, r.at) for r in rows],
            )
            for record in change.added:
                await conn.execute(
                    "INSERT INTO controllers (key, account, card, created_at)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    record.key, account, record.card, record.created_at,
                )  # fmt: skip
                await self._audit(conn, "device.added", by, record.key, "", now)
            for key in change.removed:
                await conn.execute(
                    "INSERT INTO removed_devices (key, account, removed_at, removed_by)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    key, account, now, by,
                )  # fmt: skip
                await self._audit(conn, "device.removed", by, key, "", now)
            detail = f"entries {rows[0].seq}..{rows[-1].seq}" if rows else "no entries"
            await self._audit(conn, "device-log.appended", by, account, detail, now)
        if self.on_device_removed is not None:
            for key in change.removed:  # committed: PostgreSQL first, then the bus
                await self.on_device_removed(key, account)

    async def is_removed_device(self, key: bytes) -> bool:
        async with self._reading() as conn:
            sql = "SELECT 1 FROM removed_devices WHERE key = $1"
            return await conn.fetchval(sql, key) is not None

    async def removed_among(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of ``keys`` are removed devices (one query for every device a node
        holds, after the bus or the registry was out of reach)."""
        if not keys:
            return set()
        async with self._reading() as conn:
            rows = await conn.fetch(
                "SELECT key FROM removed_devices WHERE key = ANY($1::bytea[])", list(keys)
            )
        return {bytes(r[0]) for r in rows}

    # --- Web Push ----------------------------------------------------------------
    async def set_push_subscription(self, subscription: PushSubscription) -> None:
        s = subscription
        async with self._reading() as conn:
            await conn.execute(
                "INSERT INTO push_subscriptions VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (device) DO UPDATE SET account = excluded.account, "
                "endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth, "
                "registered_at = excluded.registered_at",
                s.device,
                s.account,
                s.endpoint,
                s.p256dh,
                s.auth,
                s.registered_at,
            )

    async def push_subscription(self, device: bytes, account: bytes) -> PushSubscription | None:
        async with self._reading() as conn:
            row = await conn.fetchrow(
                "SELECT endpoint, p256dh, auth, registered_at FROM push_subscriptions "
                "WHERE device = $1 AND account = $2",
                device,
                account,
            )
        if row is None:
            return None
        return PushSubscription(
            device, account, row["endpoint"], bytes(row["p256dh"]), bytes(row["auth"]),
            row["registered_at"],
        )  # fmt: skip

    async def forget_push_subscription(self, device: bytes, *, endpoint: str = "") -> None:
        async with self._reading() as conn:
            await conn.execute(
                "DELETE FROM push_subscriptions WHERE device = $1 AND ($2 = '' OR endpoint = $2)",
                device,
                endpoint,
            )

    # --- audit -------------------------------------------------------------------
    async def audit(
        self, event: str, *, actor: bytes, subject: bytes, detail: str, now: float
    ) -> None:
        async with self._reading() as conn:
            await self._audit(conn, event, actor, subject, detail, now)

    async def audit_log(self, *, limit: int = 100) -> list[AuditEntry]:
        """Newest first, by order of writing (``at`` comes from callers' clocks)."""
        if limit < 0:
            raise UsageError(f"limit must not be negative, not {limit}")
        sql = "SELECT at, event, actor, subject, detail FROM audit_log ORDER BY id DESC LIMIT $1"
        async with self._reading() as conn:
            rows = await conn.fetch(sql, limit)
        return [
            AuditEntry(float(r[0]), str(r[1]), bytes(r[2]), bytes(r[3]), str(r[4])) for r in rows
        ]
