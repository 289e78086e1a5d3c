"""The relay's registry: accounts, controller devices, machines, tickets, revocations.

One small async interface (:class:`Registry`) that the endpoint uses; the embedded
default is :class:`relay.sqlite_registry.SqliteRegistry`; a clustered relay uses
:class:`relay.pg_registry.PostgresRegistry` without touching the endpoint.

Invariants every implementation keeps:
- A machine record exists only after a valid grant: :meth:`Registry.grant_machine`
  consumes the ticket and creates the record in one transaction.
- Revocation is permanent: a revoked key stays in ``revocations`` even if its
  machine record is deleted, and :meth:`Registry.machine` reports it revoked.
- Tickets are single-use, expire, and burn after ``max_failures`` failed handshakes.
- The audit log holds metadata only (who, what, when), never message content.
- Times are seconds since the epoch passed in by the caller (``now``), never read
  from the clock inside the registry, so tests are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from starmux.control import FailureCode
from starmux.errors import StarmuxError


class RegistryError(StarmuxError):
    """A registry operation was refused; ``code`` is stable and sent to clients."""

    def __init__(self, code: FailureCode, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


@dataclass(frozen=True)
class ControllerRecord:
    key: bytes  # Ed25519 public key of the controller device
    account: bytes  # 16-byte account id
    card: bytes  # the device's encoded identity card
    created_at: float
    last_seen: float | None = None  # when its last connection ended (None: never yet)


@dataclass(frozen=True)
class MachineRecord:
    key: bytes
    account: bytes
    card: bytes
    granted_by: bytes  # controller key whose signature is in grant_signature
    grant_signature: bytes
    grant_issued_at: float
    paired_at: float
    last_seen: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class TicketRecord:
    ticket: bytes  # 16 random bytes
    machine_key: bytes
    machine_card: bytes
    created_at: float
    expires_at: float
    failures: int
    opened_by: bytes | None  # the controller that opened it (only one may)
    consumed_at: float | None


@dataclass(frozen=True)
class DeviceLogRow:
    """One stored device log entry (see starmux.device_log): the relay verified it
    before storing and re-verifies the whole log whenever it loads it."""

    seq: int
    hash: bytes
    entry: bytes  # the entry encoded alone, as starmux.device_log.encode_entries((e,))
    author: bytes
    at: float


@dataclass(frozen=True)
class DeviceChange:
    """What appending some entries does to the ``controllers`` lookup."""

    added: tuple[ControllerRecord, ...]
    removed: tuple[bytes, ...]


@dataclass(frozen=True)
class AuditEntry:
    at: float
    event: str  # e.g. "account.created", "machine.granted", "machine.revoked"
    actor: bytes  # key of whoever did it (empty for the relay itself)
    subject: bytes  # key the event is about (empty if none)
    detail: str  # short metadata text, never content


@dataclass(frozen=True)
class PushSubscription:
    """A device's Web Push subscription, as its browser made it."""

    device: bytes
    account: bytes
    endpoint: str
    p256dh: bytes
    auth: bytes
    registered_at: float


class Registry(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    # --- registration ------------------------------------------------------------
    async def has_accounts(self) -> bool: ...

    async def add_registration_token(self, token_hash: bytes, *, now: float) -> None:
        """Store the hash of a new one-time registration token."""

    async def add_first_registration_token(self, token_hash: bytes, *, now: float) -> bool:
        """Store the token only if the registry has no account and no unused token,
        in one transaction; False (nothing stored) otherwise. Of several relay nodes
        starting on one empty registry, exactly one gets True and shows its token."""

    async def create_account(
        self,
        *,
        controller_key: bytes,
        controller_card: bytes,
        account: bytes,
        token_hash: bytes | None,
        now: float,
    ) -> ControllerRecord:
        """Create ``account`` with its first controller device, atomically consuming
        the registration token whose hash is ``token_hash`` (``None``: open
        registration). Raises ``RegistryError(FailureCode.BAD_TOKEN)`` for an unknown or used
        token and ``RegistryError(FailureCode.EXISTS)`` if the controller key is registered."""

    async def controller(self, key: bytes) -> ControllerRecord | None: ...

    async def controllers_of(self, account: bytes) -> list[ControllerRecord]: ...

    # --- tickets -----------------------------------------------------------------
    async def create_ticket(
        self, *, ticket: bytes, machine_key: bytes, machine_card: bytes, now: float, ttl: float
    ) -> TicketRecord:
        """A new ticket; any older unconsumed tickets of the same machine are dropped.
        Raises ``RegistryError(FailureCode.REVOKED)`` if ``machine_key`` was revoked and
        ``RegistryError(FailureCode.PAIRED)`` if it is already a paired machine."""

    async def open_ticket(
        self, ticket: bytes, *, controller_key: bytes, now: float
    ) -> TicketRecord:
        """Bind the ticket to one controller. Raises RegistryError with code
        ``unknown-ticket``, ``expired``, ``consumed``, ``burnt`` or ``taken`` (opened
        by another controller)."""

    async def record_ticket_failure(self, ticket: bytes, *, max_failures: int) -> int:
        """Count a failed handshake; returns the new count. At ``max_failures`` the
        ticket is burnt (unusable). Unknown tickets return 0."""

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
        """Consume the ticket (must be open by ``granted_by``, unexpired, unburnt,
        for ``machine_key`` and that exact card) and create the machine record, in
        one transaction. Same error codes as :meth:`open_ticket`, plus ``mismatch``."""

    # --- machines ----------------------------------------------------------------
    async def machine(self, key: bytes) -> MachineRecord | None:
        """The machine record; for a revoked key, a record with ``revoked_at`` set."""

    async def machines_of(self, account: bytes) -> list[MachineRecord]:
        """Paired machines of the account, not revoked, oldest first."""

    async def is_revoked(self, key: bytes) -> bool: ...

    async def revoke_machine(
        self, key: bytes, *, account: bytes, by: bytes, now: float, proof: bytes | None = None
    ) -> bool:
        """Mark revoked (forever). False if no such machine in that account.

        ``proof``: the controller's signed revocation (an encoded
        :class:`starmux.control.MachineRevocation`), stored with it so every path that
        cuts the machine off can forward it (the machine forgets its keys only on it)."""

    async def revocation_proofs(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Which of ``keys`` are revoked, each with its stored proof (b"" if none)."""

    async def touch(self, key: bytes, *, now: float) -> None:
        """Record ``last_seen`` of a machine or a controller device (never backwards)."""

    # --- device logs ---------------------------------------------------------------
    async def device_log(self, account: bytes) -> list[DeviceLogRow]:
        """The account's device log entries, in order (empty: a legacy account)."""

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
        """Append ``rows`` (already verified by the caller) in one transaction with
        ``change`` to the controllers (added rows inserted; removed keys kept
        forever in the removed set, and no longer returned by :meth:`controller`
        or :meth:`controllers_of`), only if the log still ends at
        ``after_seq`` (-1: no log yet). Raises ``RegistryError(FailureCode.LOG_MOVED)`` if
        another append landed first: the caller reloads and retries or refuses.

        With ``link_ticket`` (a device link completing), the ticket is consumed in
        the same transaction: its two ends (the device that created it and the one
        that opened it) must be ``by`` and the one device ``change`` adds, either
        way round (an owner's invite or a new device's join code), and it must be
        usable (same codes as :meth:`open_ticket`, plus ``mismatch``)."""

    async def is_removed_device(self, key: bytes) -> bool:
        """True if this controller key was removed from its account (for good)."""

    # --- Web Push ----------------------------------------------------------------
    async def set_push_subscription(self, subscription: PushSubscription) -> None:
        """Store (or replace) the device's subscription."""

    async def push_subscription(self, device: bytes, account: bytes) -> PushSubscription | None:
        """The device's subscription, if it registered one in ``account``."""

    async def forget_push_subscription(self, device: bytes, *, endpoint: str = "") -> None:
        """Delete it (with ``endpoint``: only if it is still that one, so a browser's
        newer subscription survives a late 410 for its old endpoint)."""

    # --- audit -------------------------------------------------------------------
    async def audit(
        self, event: str, *, actor: bytes, subject: bytes, detail: str, now: float
    ) -> None: ...

    async def audit_log(self, *, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
