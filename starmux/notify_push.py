"""The inner layer of a Web Push: sealed by the machine to the device, fixed size.

Two layers protect a push (PROTOCOL.md section 10):

1. inner (this module, the machine): the notification, signed by the machine's
   Ed25519 key, padded to :data:`PADDED_SIZE` and sealed (libsodium ``crypto_box_seal``:
   an ephemeral X25519 key, XSalsa20-Poly1305) to the device's X25519 key from its
   card. The relay and the push service see :data:`SEALED_SIZE` bytes, always.
2. outer (the relay, ``relay/web_push.py``): RFC 8291 ``aes128gcm`` to the browser's
   subscription keys, with VAPID (RFC 8292). The push service sees only that.

Sealed layout (what the device opens)::

    sealed = crypto_box_seal(padded, device_dh_pk)               # SEALED_SIZE bytes
    padded = len(signed) (2 bytes, big-endian) || signed || zeros # PADDED_SIZE bytes
    signed = APP signed-push {note: APP push-note, signature}
    signature = Ed25519(machine, transcript("starmux/push-notification/v1",
                                            device_key, note))

The signature matters: a sealed box is anonymous, and the relay knows every card,
so without it the relay could forge a convincing "Approve deploy?" prompt. The
device checks ``note.machine`` is a machine it paired and the signature is that
machine's. :func:`open_notification` is the reference for the browser's code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import nacl.bindings
import nacl.exceptions
import nacl.public

from .codec import Message, Timestamp
from .errors import CryptoError, MessageError, UsageError
from .identity import NodeKeys, verify_signature
from .messages import APP
from .notify_rules import Notification, NotifyKind
from .transcript import transcript

PUSH_DOMAIN = b"starmux/push-notification/v1"
SUBSCRIPTION_DOMAIN = b"starmux/push-subscription/v1"
#: every push plaintext is padded to this; 4 KiB is the Web Push limit for the
#: whole outer record, so 1 KiB leaves room and is plenty for a glance
PADDED_SIZE = 1024
SEALED_SIZE = PADDED_SIZE + nacl.bindings.crypto_box_SEALBYTES
_LENGTH = 2


@APP.register
@dataclass(frozen=True)
class PushNote(Message):
    """What a device shows: inside the sealed box only."""

    KIND = "push-note"
    machine: bytes  # the sending machine's key: the device checks it paired it
    notify_kind: NotifyKind
    at: Timestamp
    machine_name: str
    session: str
    session_title: str
    checkpoint: str
    title: str
    body: str
    cwd: str
    expires_at: Timestamp | None


@APP.register
@dataclass(frozen=True)
class SignedPush(Message):
    KIND = "signed-push"
    note: bytes
    signature: bytes


def note_of(machine_key: bytes, n: Notification) -> PushNote:
    return PushNote(
        machine_key,
        n.kind,
        n.at,
        n.machine,
        n.session,
        n.session_title,
        n.checkpoint,
        n.title,
        n.body,
        n.cwd,
        n.expires_at,
    )


def _signed(machine: NodeKeys, device_key: bytes, note: PushNote) -> bytes:
    encoded = APP.encode(note)
    signature = machine.sign(transcript(PUSH_DOMAIN, device_key, encoded))
    return APP.encode(SignedPush(encoded, signature))


def _fitting(machine: NodeKeys, device_key: bytes, note: PushNote) -> bytes:
    """The signed note, its texts shortened until it fits :data:`PADDED_SIZE`."""
    for limit in (None, 400, 200, 100, 40, 0):
        trimmed = note
        if limit is not None:
            trimmed = replace(
                note,
                body=note.body[:limit],
                cwd=note.cwd[:limit],
                title=note.title[: max(limit, 40)],
                session_title=note.session_title[: max(limit, 40)],
                machine_name=note.machine_name[:64],
            )
        signed = _signed(machine, device_key, trimmed)
        if len(signed) + _LENGTH <= PADDED_SIZE:
            return signed
    raise UsageError("a push notification does not fit its fixed size")  # pragma: no cover


def seal_notification(
    machine: NodeKeys, *, device_key: bytes, device_dh: bytes, notification: Notification
) -> bytes:
    """The opaque bytes the relay forwards: :data:`SEALED_SIZE` long, always."""
    signed = _fitting(machine, device_key, note_of(machine.sign_public, notification))
    padded = len(signed).to_bytes(_LENGTH, "big") + signed
    padded += bytes(PADDED_SIZE - len(padded))
    return nacl.public.SealedBox(nacl.public.PublicKey(device_dh)).encrypt(padded)


def open_notification(
    device: NodeKeys, sealed: bytes, *, machine_known: Callable[[bytes], bool]
) -> PushNote:
    """Open a push as the device does; :class:`CryptoError` for anything wrong
    (wrong size, not for us, bad padding, unknown machine, bad signature)."""
    if len(sealed) != SEALED_SIZE:
        raise CryptoError("not a starmux push")
    try:
        padded = nacl.public.SealedBox(nacl.public.PrivateKey(device.dh_private)).decrypt(sealed)
    except nacl.exceptions.CryptoError as exc:
        raise CryptoError("not a starmux push") from exc
    length = int.from_bytes(padded[:_LENGTH], "big")
    rest = padded[_LENGTH + length :]
    if _LENGTH + length > len(padded) or any(rest):
        raise CryptoError("not a starmux push")
    try:
        signed = APP.decode(padded[_LENGTH : _LENGTH + length])
        if not isinstance(signed, SignedPush):
            raise CryptoError("not a starmux push")
        note = APP.decode(signed.note)
    except MessageError as exc:
        raise CryptoError("not a starmux push") from exc
    if not isinstance(note, PushNote) or not machine_known(note.machine):
        raise CryptoError("not a starmux push")
    verify_signature(
        note.machine, transcript(PUSH_DOMAIN, device.sign_public, signed.note), signed.signature
    )
    return note


def subscription_transcript(
    relay_key: bytes, device_key: bytes, endpoint: str, p256dh: bytes, auth: bytes, issued_at: float
) -> bytes:
    """What a device signs in ``register-push``."""
    from .transcript import signed_time

    return transcript(
        SUBSCRIPTION_DOMAIN,
        relay_key,
        device_key,
        endpoint.encode(),
        p256dh,
        auth,
        signed_time(issued_at),
    )
