"""An account's device log: who its controller devices are, as a signed hash chain.

Each entry is one of ``add(card, role)``, ``remove(device)``, ``set_role(device,
role)``, names the hash of the entry before it, and is signed by a device that is
an **owner at that point** (the state after every earlier entry). The account's
first device writes entry 0 (the *genesis*): ``add`` of itself as owner, signed by
itself, ``prev`` all zeros. Signed bytes (domain-separated, length-prefixed)::

    transcript(b"starmux/device-log/v1",
               account, seq(8 bytes BE), prev, op, subject, card, role,
               signed_time(at), author)

and an entry's hash (what the next entry's ``prev`` names) is BLAKE2b-256 keyed by
``b"starmux/device-log-entry/v1"`` over ``transcript(signed bytes, signature)``.

Invariants (:class:`DeviceLog` exists only in a state that keeps them):

- Verification starts at the genesis, or continues from a head already verified;
  every entry is checked against the state its predecessors built.
- ``seq`` counts from 0 with no gap, and ``prev`` is the hash of entry ``seq - 1``:
  a missing entry is :class:`DeviceLogGapError`; a different entry where we
  already hold one is :class:`DeviceLogForkError`; a log shorter than the head we
  hold (a replay) is :class:`DeviceLogStaleError`.
- There is always at least one owner (:class:`DeviceLogLastOwnerError`).
- A removed device stays removed: it can never sign, nor be added again (a
  re-linked device has new keys).
- The account id is inside every signature, so no entry moves between accounts.

No clock here: ``at`` is passed in by the caller and only recorded.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nacl.bindings

from .codec import Message, MessageCodec
from .device_roles import Action, DeviceRole, allowed
from .errors import (
    CryptoError,
    DeviceLogAuthorityError,
    DeviceLogForkError,
    DeviceLogFormatError,
    DeviceLogGapError,
    DeviceLogLastOwnerError,
    DeviceLogRuleError,
    DeviceLogSignatureError,
    DeviceLogStaleError,
    RemoteProtocolError,
    UsageError,
)
from .fingerprint import fingerprint
from .identity import IdentityCard, NodeKeys, Role, verify_signature
from .transcript import signed_time, transcript

ENTRY_DOMAIN = b"starmux/device-log/v1"
HASH_DOMAIN = b"starmux/device-log-entry/v1"
ACCOUNT_BYTES = 16
HASH_BYTES = 32
GENESIS_PREV = b"\0" * HASH_BYTES
MAX_ENTRIES = 4096  # an account with thousands of device changes is not a person

LOG_CODEC = MessageCodec(DeviceLogFormatError)


class Op(enum.StrEnum):
    ADD = "add"
    REMOVE = "remove"
    SET_ROLE = "set-role"


@LOG_CODEC.register
@dataclass(frozen=True)
class LogEntry(Message):
    """One signed entry. ``card`` is set only for ``add``; ``role`` is empty for
    ``remove``. The shape is checked on construction (so on decode too); the
    signature and the rules are checked by :class:`DeviceLog`."""

    KIND = "device-log-entry"
    account: bytes
    seq: int
    prev: bytes
    op: Op
    subject: bytes  # the Ed25519 key of the device the entry is about
    card: bytes
    role: str
    at: float
    author: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.account) != ACCOUNT_BYTES:
            raise ValueError("account id is 16 bytes")
        if not 0 <= self.seq < MAX_ENTRIES:
            raise ValueError("seq out of range")
        if len(self.prev) != HASH_BYTES or len(self.subject) != 32 or len(self.author) != 32:
            raise ValueError("bad key or hash length")
        if len(self.signature) != 64:
            raise ValueError("bad signature length")
        if (self.op is Op.ADD) != bool(self.card):
            raise ValueError("a card comes with add and only with add")
        if (self.op is Op.REMOVE) != (self.role == ""):
            raise ValueError("remove has no role; add and set-role have one")
        if self.role and self.role not in DeviceRole._value2member_map_:
            raise ValueError("unknown role")

    def signed_bytes(self) -> bytes:
        return transcript(
            ENTRY_DOMAIN,
            self.account,
            self.seq.to_bytes(8, "big"),
            self.prev,
            self.op.value.encode(),
            self.subject,
            self.card,
            self.role.encode(),
            signed_time(self.at),
            self.author,
        )

    @property
    def hash(self) -> bytes:
        return entry_hash(self)


def entry_hash(entry: LogEntry) -> bytes:
    data = transcript(HASH_DOMAIN, entry.signed_bytes(), entry.signature)
    return nacl.bindings.crypto_generichash_blake2b_salt_personal(
        data, digest_size=HASH_BYTES, key=HASH_DOMAIN
    )


@LOG_CODEC.register
@dataclass(frozen=True)
class LogEntries(Message):
    """A run of entries as sent between nodes (a whole log or a suffix)."""

    KIND = "device-log"
    entries: tuple[LogEntry, ...]


@dataclass(frozen=True)
class LogHead:
    """Where a log ends: what a device says it holds, in a few bytes."""

    seq: int  # seq of the last entry; -1 for no log at all
    hash: bytes  # hash of the last entry; GENESIS_PREV for no log

    def __post_init__(self) -> None:
        if not -1 <= self.seq < MAX_ENTRIES or len(self.hash) != HASH_BYTES:
            raise DeviceLogFormatError("invalid device log head")


NO_HEAD = LogHead(-1, GENESIS_PREV)


@dataclass(frozen=True)
class Device:
    """A current device of the account."""

    key: bytes
    card: IdentityCard
    role: DeviceRole
    added_by: bytes
    added_at: float

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def encode_entries(entries: Iterable[LogEntry]) -> bytes:
    return LOG_CODEC.encode(LogEntries(tuple(entries)))


def decode_entries(data: bytes) -> tuple[LogEntry, ...]:
    """Parse untrusted bytes; raises only :class:`DeviceLogFormatError`."""
    return LOG_CODEC.decode_as(data, LogEntries).entries


class DeviceLog:
    """A verified device log and the membership it yields. Immutable: every
    change returns a new object, so a refused change leaves the old one intact."""

    __slots__ = ("_devices", "_entries", "_removed", "account")

    def __init__(self) -> None:  # use genesis(), verify() or a method below
        self.account = b""
        self._entries: tuple[LogEntry, ...] = ()
        self._devices: dict[bytes, Device] = {}
        self._removed: frozenset[bytes] = frozenset()

    # --- building ---------------------------------------------------------------
    @classmethod
    def genesis(cls, keys: NodeKeys, card: IdentityCard, account: bytes, *, at: float) -> DeviceLog:
        """The first entry of a new account, written by its first device."""
        if card.sign_public != keys.sign_public:
            raise UsageError("the genesis card must be the signing device's own")
        entry = sign_entry(
            keys,
            account,
            0,
            GENESIS_PREV,
            Op.ADD,
            card.sign_public,
            card.encode(),
            DeviceRole.OWNER.value,
            at,
        )
        return cls.verify([entry])

    @classmethod
    def verify(cls, entries: Sequence[LogEntry], *, account: bytes | None = None) -> DeviceLog:
        """Verify a whole log from its first entry."""
        if not entries:
            raise DeviceLogGapError("a device log has at least its first entry")
        log = cls()
        log.account = entries[0].account
        if account is not None and not hmac.compare_digest(account, log.account):
            raise DeviceLogRuleError("the device log belongs to another account")
        return log._with(entries)

    def extend(self, entries: Sequence[LogEntry]) -> DeviceLog:
        """Verify ``entries`` as the continuation of this log's head."""
        return self._with(entries)

    def update(self, offered: Sequence[LogEntry]) -> DeviceLog:
        """Take a log offered by a peer, which may start anywhere at or before our
        head + 1. Entries we hold must be identical (else fork); an offer that ends
        before our head is stale; the rest is verified as an extension."""
        if not offered:
            return self  # nothing after a head the peer knows we hold
        start = offered[0].seq
        if start > len(self._entries):
            raise DeviceLogGapError(
                f"the offered device log starts at entry {start}; we hold {len(self._entries)}"
            )
        for entry in offered:
            if entry.seq < len(self._entries):
                if not hmac.compare_digest(entry.hash, self._entries[entry.seq].hash):
                    raise DeviceLogForkError(f"entry {entry.seq} differs from the one we hold")
            else:
                break
        ends_at = offered[-1].seq
        if ends_at < self.head.seq:
            raise DeviceLogStaleError(
                f"offered device log ends at entry {ends_at}; we hold up to {self.head.seq}"
            )
        return self._with([e for e in offered if e.seq >= len(self._entries)])

    def append(
        self,
        keys: NodeKeys,
        op: Op,
        subject: bytes,
        *,
        card: IdentityCard | None = None,
        role: DeviceRole | None = None,
        at: float,
    ) -> tuple[DeviceLog, LogEntry]:
        """Sign a new entry with ``keys`` (must be an owner) and verify it like any other."""
        entry = sign_entry(
            keys,
            self.account,
            len(self._entries),
            self.head.hash,
            op,
            subject,
            card.encode() if card is not None else b"",
            role.value if role is not None else "",
            at,
        )
        return self.extend([entry]), entry

    # --- reading ----------------------------------------------------------------
    @property
    def entries(self) -> tuple[LogEntry, ...]:
        return self._entries

    @property
    def head(self) -> LogHead:
        if not self._entries:
            return NO_HEAD
        return LogHead(self._entries[-1].seq, self._entries[-1].hash)

    @property
    def devices(self) -> tuple[Device, ...]:
        """Current devices, in the order they were added."""
        return tuple(self._devices.values())

    def device(self, key: bytes) -> Device | None:
        return self._devices.get(key)

    def role_of(self, key: bytes) -> DeviceRole | None:
        device = self._devices.get(key)
        return device.role if device is not None else None

    def is_removed(self, key: bytes) -> bool:
        return key in self._removed

    def allows(self, key: bytes, action: Action) -> bool:
        return allowed(self.role_of(key), action)

    def since(self, head: LogHead) -> tuple[LogEntry, ...]:
        """The entries after ``head`` (all of them if we do not hold that head: the
        receiver's update() then reports the fork)."""
        if 0 <= head.seq < len(self._entries) and hmac.compare_digest(
            self._entries[head.seq].hash, head.hash
        ):
            return self._entries[head.seq + 1 :]
        return self._entries

    def encode(self) -> bytes:
        return encode_entries(self._entries)

    # --- the rules --------------------------------------------------------------
    def _with(self, entries: Iterable[LogEntry]) -> DeviceLog:
        devices = dict(self._devices)
        removed = set(self._removed)
        chain = list(self._entries)
        for entry in entries:
            if len(chain) >= MAX_ENTRIES:
                raise DeviceLogRuleError(f"a device log holds at most {MAX_ENTRIES} entries")
            _check_place(entry, chain, self.account)
            _check_signature(entry)
            _apply(entry, devices, removed, genesis=not chain)
            chain.append(entry)
        log = DeviceLog()
        log.account = self.account
        log._entries = tuple(chain)
        log._devices = devices
        log._removed = frozenset(removed)
        return log


def sign_entry(
    keys: NodeKeys,
    account: bytes,
    seq: int,
    prev: bytes,
    op: Op,
    subject: bytes,
    card: bytes,
    role: str,
    at: float,
) -> LogEntry:
    """Sign an entry without checking it against any log: :class:`DeviceLog` does
    that (append() is the checked way to write one)."""
    try:
        unsigned = LogEntry(
            account, seq, prev, op, subject, card, role, at, keys.sign_public, b"\0" * 64
        )
    except ValueError as exc:
        raise UsageError(f"invalid device log entry: {exc}") from exc
    signature = keys.sign(unsigned.signed_bytes())
    return LogEntry(account, seq, prev, op, subject, card, role, at, keys.sign_public, signature)


def _check_place(entry: LogEntry, chain: list[LogEntry], account: bytes) -> None:
    if not hmac.compare_digest(entry.account, account):
        raise DeviceLogRuleError(f"entry {entry.seq} belongs to another account")
    expected_seq = len(chain)
    expected_prev = chain[-1].hash if chain else GENESIS_PREV
    if entry.seq < expected_seq:
        raise DeviceLogForkError(f"a second entry {entry.seq}; we already hold one")
    if entry.seq > expected_seq:
        raise DeviceLogGapError(f"entry {entry.seq} follows entry {expected_seq - 1}")
    if not hmac.compare_digest(entry.prev, expected_prev):
        # Right seq, other predecessor: it was written on top of a different history.
        raise DeviceLogForkError(f"entry {entry.seq} does not follow the entry before it")


def _check_signature(entry: LogEntry) -> None:
    try:
        verify_signature(entry.author, entry.signed_bytes(), entry.signature)
    except CryptoError:
        raise DeviceLogSignatureError(f"entry {entry.seq} has a bad signature") from None


def _apply(
    entry: LogEntry, devices: dict[bytes, Device], removed: set[bytes], *, genesis: bool
) -> None:
    """Check ``entry`` against the state before it and change that state."""
    if genesis:
        if entry.op is not Op.ADD or entry.subject != entry.author or entry.role != "owner":
            raise DeviceLogRuleError("the first entry adds its own author as owner")
    else:
        author = devices.get(entry.author)
        if author is None or author.role is not DeviceRole.OWNER:
            raise DeviceLogAuthorityError(
                f"entry {entry.seq} is signed by {fingerprint(entry.author)}, "
                "which was not an owner of the account then"
            )
    subject = entry.subject
    if entry.op is Op.ADD:
        if subject in devices or subject in removed:
            raise DeviceLogRuleError(f"entry {entry.seq} adds a device that is or was a member")
        card = _card(entry)
        devices[subject] = Device(subject, card, DeviceRole(entry.role), entry.author, entry.at)
        return
    current = devices.get(subject)
    if current is None:
        raise DeviceLogRuleError(f"entry {entry.seq} names a device that is not current")
    new_role = DeviceRole(entry.role) if entry.op is Op.SET_ROLE else None
    owners = sum(d.role is DeviceRole.OWNER for d in devices.values())
    if current.role is DeviceRole.OWNER and new_role is not DeviceRole.OWNER and owners == 1:
        raise DeviceLogLastOwnerError(f"entry {entry.seq} would leave the account without an owner")
    if new_role is None:
        del devices[subject]
        removed.add(subject)
    else:
        devices[subject] = Device(
            subject, current.card, new_role, current.added_by, current.added_at
        )


def _card(entry: LogEntry) -> IdentityCard:
    try:
        card = IdentityCard.decode(entry.card)
    except (RemoteProtocolError, CryptoError):
        raise DeviceLogRuleError(f"entry {entry.seq} carries an invalid card") from None
    if card.role is not Role.CONTROLLER or card.sign_public != entry.subject:
        raise DeviceLogRuleError(f"entry {entry.seq}: the card is not the added device's")
    return card
