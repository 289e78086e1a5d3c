"""Notification messages (issue 16, DESIGN.md section 11).

Inside the KK channel (codec :data:`~starmux.messages.APP`), controller → machine:

- ``notify-target`` (a command): notify me here (a webhook URL, or Web Push through
  the relay), with this much content. Stored on the machine with the device.
- ``notify-target-remove``, ``notify-settings`` (which kinds, when to remind) and
  ``notify-test``: commands too, so they wait in the outbox for an offline machine.
- ``viewing``: a channel message, not a command (it is stale by the time an
  outbox would deliver it): I show this session in the foreground until ``until``.

Machine → controllers, a logged event on the stream ``notify``:

- ``notify-status``: a target of a device works, fails (with why) or was removed.
  It never carries the URL (other devices of the account read the log too).

Relay control messages (codec :data:`~starmux.control.CONTROL`):

- ``register-push`` (controller → relay, signed by the device key): my Web Push
  subscription; ``push-registered`` answers with the relay's VAPID public key.
- ``send-push`` (machine → relay): these opaque bytes to that device's push
  endpoint; ``push-queued`` answers at once (the POST happens afterwards).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from .codec import Message, Range, Timestamp
from .control import CONTROL
from .errors import UsageError
from .messages import APP, check_id
from .notify_rules import ContentLevel, NotifyKind, TargetKind

Fraction = Annotated[float, Range(0.001, 0.999)]
Count = Annotated[int, Range(0, 1_000_000)]

#: how many targets one device may keep on one machine
MAX_TARGETS_PER_DEVICE = 16
MAX_URL = 2048
MAX_DETAIL = 300


class TargetState(enum.StrEnum):
    ACTIVE = "active"  # registered; the last delivery (if any) went through
    FAILING = "failing"  # the last delivery failed after its retries
    REMOVED = "removed"  # the device removed it (or the relay dropped the subscription)


class PushOutcome(enum.StrEnum):
    QUEUED = "queued"  # the relay will POST it to the endpoint
    NO_SUBSCRIPTION = "no-subscription"  # that device registered no push endpoint
    RATE_LIMITED = "rate-limited"  # over the device's push budget: dropped


def _check_target_id(value: str) -> None:
    check_id(value, "notification target id")


@APP.register
@dataclass(frozen=True)
class NotifyTarget(Message):
    """Controller → machine (command): notify this device at ``target``."""

    KIND = "notify-target"
    target: str
    target_kind: TargetKind
    url: str  # a webhook's http(s) URL; empty for push
    content: ContentLevel

    def __post_init__(self) -> None:
        _check_target_id(self.target)
        if len(self.url) > MAX_URL:
            raise UsageError("a webhook URL is at most 2048 characters")
        if (self.target_kind is TargetKind.PUSH) != (not self.url):
            raise UsageError("a webhook target has a URL, a push target none")


@APP.register
@dataclass(frozen=True)
class NotifyTargetRemove(Message):
    KIND = "notify-target-remove"
    target: str

    def __post_init__(self) -> None:
        _check_target_id(self.target)


@APP.register
@dataclass(frozen=True)
class NotifySettings(Message):
    """Controller → machine (command): this device's settings for this machine."""

    KIND = "notify-settings"
    kinds: tuple[NotifyKind, ...]
    reminder_fraction: Fraction


@APP.register
@dataclass(frozen=True)
class NotifyTest(Message):
    """Controller → machine (command): send a test notification now."""

    KIND = "notify-test"
    target: str  # empty: every target of this device

    def __post_init__(self) -> None:
        if self.target:
            _check_target_id(self.target)


@APP.register
@dataclass(frozen=True)
class Viewing(Message):
    """Controller → machine (channel message): I show ``session`` until ``until``
    (empty session: I show none); no push about it meanwhile."""

    KIND = "viewing"
    session: str
    until: Timestamp

    def __post_init__(self) -> None:
        if self.session:
            check_id(self.session, "session id")


@APP.register
@dataclass(frozen=True)
class NotifyStatus(Message):
    """Machine → controllers (event on the stream ``notify``)."""

    KIND = "notify-status"
    device: bytes
    target: str
    target_kind: TargetKind
    state: TargetState
    detail: str  # why it fails, or what was last delivered; never the URL
    delivered: Count  # notifications that went through since registration
    failed: Count  # notifications given up since registration

    def __post_init__(self) -> None:
        _check_target_id(self.target)
        if len(self.device) != 32:
            raise UsageError("a notify status names a 32-byte device key")
        if len(self.detail) > MAX_DETAIL:
            raise UsageError("a notify status detail is at most 300 characters")


#: the commands :mod:`daemon.notifications` runs (all need only the ``watch`` action)
NOTIFY_COMMANDS = (NotifyTarget, NotifyTargetRemove, NotifySettings, NotifyTest)


# --- relay control messages --------------------------------------------------------


@CONTROL.register
@dataclass(frozen=True)
class RegisterPush(Message):
    """Controller → relay: this device's Web Push subscription (empty endpoint: none).

    Signed by the device over :func:`starmux.notify_push.subscription_transcript`."""

    KIND = "register-push"
    request_id: int
    endpoint: str
    p256dh: bytes
    auth: bytes
    issued_at: Timestamp
    signature: bytes


@CONTROL.register
@dataclass(frozen=True)
class PushRegistered(Message):
    KIND = "push-registered"
    request_id: int
    vapid_public_key: bytes  # uncompressed P-256 point (65 bytes): applicationServerKey


@CONTROL.register
@dataclass(frozen=True)
class SendPush(Message):
    """Machine → relay: ``payload`` (sealed to the device, fixed size) to ``device``."""

    KIND = "send-push"
    request_id: int
    device: bytes
    payload: bytes


@CONTROL.register
@dataclass(frozen=True)
class PushQueued(Message):
    KIND = "push-queued"
    request_id: int
    outcome: PushOutcome
