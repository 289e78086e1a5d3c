"""Application messages: what controllers and machines say inside encrypted channels.

Encoded with :data:`APP` (a strict, versioned :class:`~starmux.codec.MessageCodec`);
decoding errors are :class:`~starmux.errors.MessageError`. The relay never sees
these: they travel as Noise ciphertext.

Everything a machine says is hostile until checked (a compromised machine must not
reach beyond itself): ids match :data:`ID_PATTERN`, statuses, decisions and streams
are one of their enums, times are :data:`~starmux.codec.Timestamp` (finite, 1970 to
3000). The checks run in ``__post_init__``, so a message that fails them does not
decode at all (and our own code cannot build one).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .checkpoint_preview import CheckpointPreview
from .codec import Message, MessageCodec, Timestamp
from .decisions import Verdict
from .errors import MessageError, UsageError
from .session_state import Status

APP = MessageCodec(MessageError, max_size=60 * 1024)
# Nested in checkpoint-raised; registered (like logged-event) so that every codec
# mirror (fuzz seeds, the web controller's schema) knows its shape.
APP.register(CheckpointPreview)

#: Session, checkpoint and command ids and log epochs: short, and nothing a terminal
#: would interpret (no control characters, escapes or spaces).
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class OutputStream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    PTY = "pty"  # a session run with a pseudo-terminal has one stream


# The fields are typed with these enums, so the codec refuses other values when
# decoding; the checks in __post_init__ also hold for messages our code builds.
STATUSES = frozenset(status.value for status in Status)
DECISIONS = frozenset(verdict.value for verdict in Verdict)
STREAMS = frozenset(stream.value for stream in OutputStream)


def check_id(value: str, what: str) -> None:
    """Raise :class:`UsageError` unless ``value`` is a well-formed id."""
    if not ID_PATTERN.fullmatch(value):
        raise UsageError(f"invalid {what} {value[:80]!r}")


def _check_choice(value: str, choices: frozenset[str], what: str) -> None:
    if value not in choices:
        raise UsageError(f"invalid {what} {value[:80]!r}")


# --- pairing (inside Noise_XXpsk3) -------------------------------------------------


@APP.register
@dataclass(frozen=True)
class PairingIdentity(Message):
    """Handshake payload: who I am (and, from the controller, which account)."""

    KIND = "pairing-identity"
    card: bytes
    account: bytes


@APP.register
@dataclass(frozen=True)
class PairingAccepted(Message):
    """Machine → controller: your card checks out and you knew the secret.

    ``name``: the machine's real name when its card (which the relay sees) carries a
    generic one (``daemon start --private-name``); empty otherwise."""

    KIND = "pairing-accepted"
    name: str


@APP.register
@dataclass(frozen=True)
class PairingGranted(Message):
    """Controller → machine: the signed grant the relay accepted."""

    KIND = "pairing-granted"
    account: bytes
    issued_at: Timestamp
    signature: bytes


@APP.register
@dataclass(frozen=True)
class PairingStored(Message):
    """Machine → controller: grant verified and stored; pairing complete."""

    KIND = "pairing-stored"


# --- live session channel (inside Noise_KK) --------------------------------------


@APP.register
@dataclass(frozen=True)
class SyncRequest(Message):
    """Controller → machine: send me every event after ``after_seq`` of ``epoch``.

    An unknown or empty ``epoch`` (the machine's log was wiped, or a first sync) gets
    the whole log from the start with the machine's current epoch.
    """

    KIND = "sync-request"
    epoch: str
    after_seq: int
    limit: int

    def __post_init__(self) -> None:
        if self.epoch:
            check_id(self.epoch, "epoch")


@APP.register
@dataclass(frozen=True)
class LiveAck(Message):
    """Controller → machine, on a new channel and while live: every event through
    ``seq`` of ``epoch`` is applied; push (or answer) at most ``window_pages`` pages
    and ``window_bytes`` bytes beyond it, then say "sync again" (see
    :mod:`starmux.live_window`)."""

    KIND = "live-ack"
    epoch: str
    seq: int
    window_pages: int
    window_bytes: int

    def __post_init__(self) -> None:
        check_id(self.epoch, "epoch")
        if self.seq < 0:
            raise UsageError("a live-ack's seq cannot be negative")
        if not (1 <= self.window_pages <= 1 << 20 and 1 <= self.window_bytes <= 1 << 40):
            raise UsageError("a live-ack's window is out of range")


@APP.register
@dataclass(frozen=True)
class LoggedEvent(Message):
    """One entry of a machine's event log; ``body`` is an APP-encoded event message."""

    KIND = "logged-event"
    seq: int
    at: Timestamp
    session: str
    body: bytes

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise UsageError("an event's seq starts at 1")
        check_id(self.session, "session id")


@APP.register
@dataclass(frozen=True)
class EventPage(Message):
    """Machine → controller: events in ``seq`` order (a sync page or live events)."""

    KIND = "event-page"
    epoch: str
    events: tuple[LoggedEvent, ...]
    more: bool  # another sync page follows
    live: bool  # pushed as it happened, not in answer to a SyncRequest

    def __post_init__(self) -> None:
        check_id(self.epoch, "epoch")


@APP.register
@dataclass(frozen=True)
class CommandEnvelope(Message):
    """Controller → machine: one outbox command; ``body`` is an APP-encoded command."""

    KIND = "command"
    command_id: str
    body: bytes

    def __post_init__(self) -> None:
        check_id(self.command_id, "command id")


@APP.register
@dataclass(frozen=True)
class CommandAck(Message):
    """Machine → controller: the command ran (or was refused). Repeats are re-acked
    with the first result, never run twice."""

    KIND = "command-ack"
    command_id: str
    ok: bool
    error: str
    hint: str
    result: str

    def __post_init__(self) -> None:
        check_id(self.command_id, "command id")


# --- commands (bodies of CommandEnvelope) ----------------------------------------


@APP.register
@dataclass(frozen=True)
class StartSession(Message):
    """``attachments``: transfer ids of files the controller uploaded first
    (``offer-file``); the machine puts them in the session's attachments folder.
    Version 2 added them."""

    KIND = "start-session"
    VERSION = 2
    session: str
    argv: tuple[str, ...]
    cwd: str
    title: str
    env: dict[str, str]
    pty: bool
    attachments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_id(self.session, "session id")
        if len(self.attachments) > 64:
            raise UsageError("at most 64 attachments")
        for transfer in self.attachments:
            check_id(transfer, "transfer id")


@APP.register
@dataclass(frozen=True)
class CancelSession(Message):
    KIND = "cancel-session"
    session: str

    def __post_init__(self) -> None:
        check_id(self.session, "session id")


@APP.register
@dataclass(frozen=True)
class SendInput(Message):
    KIND = "send-input"
    session: str
    data: bytes

    def __post_init__(self) -> None:
        check_id(self.session, "session id")


@APP.register
@dataclass(frozen=True)
class DecideCheckpoint(Message):
    """Signed by the deciding controller (see :func:`starmux.checkpoints.decision_transcript`)."""

    KIND = "decide-checkpoint"
    checkpoint: str
    approve: bool
    reason: str
    decided_at: Timestamp
    signature: bytes

    def __post_init__(self) -> None:
        check_id(self.checkpoint, "checkpoint id")


# --- events (bodies of LoggedEvent) ------------------------------------------------


@APP.register
@dataclass(frozen=True)
class SessionCreated(Message):
    KIND = "session-created"
    argv: tuple[str, ...]
    cwd: str
    title: str
    pty: bool
    command_id: str

    def __post_init__(self) -> None:
        check_id(self.command_id, "command id")


@APP.register
@dataclass(frozen=True)
class SessionStatusChanged(Message):
    KIND = "session-status"
    status: Status
    exit_code: int | None
    detail: str

    def __post_init__(self) -> None:
        _check_choice(self.status, STATUSES, "session status")


@APP.register
@dataclass(frozen=True)
class Output(Message):
    KIND = "output"
    stream: OutputStream
    data: bytes

    def __post_init__(self) -> None:
        _check_choice(self.stream, STREAMS, "output stream")


@APP.register
@dataclass(frozen=True)
class CostReported(Message):
    KIND = "cost"
    input_tokens: int
    output_tokens: int
    usd: float
    note: str


@APP.register
@dataclass(frozen=True)
class CheckpointRaised(Message):
    """Version 2 added ``preview``: what the checkpoint would let happen, if known."""

    KIND = "checkpoint-raised"
    VERSION = 2
    checkpoint: str
    title: str
    body: str
    expires_at: Timestamp
    default_approve: bool
    preview: CheckpointPreview | None = None

    def __post_init__(self) -> None:
        check_id(self.checkpoint, "checkpoint id")


@APP.register
@dataclass(frozen=True)
class CheckpointDecided(Message):
    KIND = "checkpoint-decided"
    checkpoint: str
    decision: Verdict
    by: bytes  # controller key; empty when the default was applied on expiry
    reason: str
    decided_at: Timestamp

    def __post_init__(self) -> None:
        check_id(self.checkpoint, "checkpoint id")
        _check_choice(self.decision, DECISIONS, "decision")
        if len(self.by) not in (0, 32):
            raise UsageError("a decision is by a 32-byte controller key, or by nobody")


# Every module that adds application messages registers them here on import, so
# whoever decodes with APP knows every kind whatever else it happened to import.
from . import (  # noqa: E402, F401
    device_messages,
    notify_messages,
    notify_push,
    review_messages,
    task_messages,
    transfer_messages,
)
