"""The live channel between a controller and a machine: ``Noise_KK``, every reconnect.

Both static keys are known from pairing, so the controller (initiator) and the
machine (responder) authenticate each other in one round trip with fresh
ephemeral keys each time: forward secrecy, no replay across connections.

::

    controller  -> e, es, ss     (empty payload: the relay could replay message 1)
    machine     <- e, ee, se     (empty payload)
    then SESSION_TRANSPORT messages, each an APP message padded to a size bucket
    (starmux.padding) and encrypted in order

The prologue binds the protocol version, the relay's key and both fingerprints.
Any decryption failure closes the :class:`LiveChannel` for good (``CryptoError``);
the side that noticed sends SESSION_RESET and the controller handshakes again.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.utils

from .channel import SecureChannel
from .codec import Message
from .e2e import Kind, unwrap, wrap
from .errors import CryptoError, RemoteProtocolError
from .fingerprint import fingerprint_bytes
from .identity import IdentityCard, NodeKeys
from .messages import APP
from .noise import HandshakeState, KeyPair
from .transcript import transcript

LIVE_PROTOCOL = "Noise_KK_25519_ChaChaPoly_BLAKE2b"
LIVE_DOMAIN = b"starmux/live/v1"
#: Rekey both directions every this many messages (Noise REKEY, deterministic).
REKEY_EVERY = 10_000
Rng = Callable[[int], bytes]


def live_prologue(relay_key: bytes, controller_key: bytes, machine_key: bytes) -> bytes:
    return transcript(
        LIVE_DOMAIN, relay_key, fingerprint_bytes(controller_key), fingerprint_bytes(machine_key)
    )


class LiveChannel:
    """Encrypts and decrypts APP messages as SESSION_TRANSPORT bodies."""

    def __init__(self, channel: SecureChannel) -> None:
        self._channel = channel

    @property
    def closed(self) -> bool:
        return self._channel.closed

    def seal(self, message: Message) -> bytes:
        return wrap(Kind.SESSION_TRANSPORT, self._channel.encrypt(APP.encode(message)))

    def open(self, payload: bytes) -> Message:
        """Decrypt a SESSION_TRANSPORT payload (after :func:`starmux.e2e.unwrap`).

        CryptoError closes the channel for good; a message that decrypts but does not
        decode is a protocol error from an authenticated peer, also fatal.
        """
        plaintext = self._channel.decrypt(payload)
        try:
            return APP.decode(plaintext)
        except RemoteProtocolError:
            self._channel.close()
            raise


def initiate(
    keys: NodeKeys, machine: IdentityCard, *, relay_key: bytes, rng: Rng = nacl.utils.random
) -> tuple[HandshakeState, bytes]:
    """Controller: the handshake state and the first message body to send."""
    hs = HandshakeState(
        LIVE_PROTOCOL,
        initiator=True,
        prologue=live_prologue(relay_key, keys.sign_public, machine.sign_public),
        s=KeyPair.from_private(keys.dh_private),
        rs=machine.dh_public,
        rng=rng,
    )
    return hs, wrap(Kind.SESSION_HANDSHAKE, hs.write_message(b""))


def finish(hs: HandshakeState, payload: bytes) -> LiveChannel:
    """Controller: read the machine's answer (a SESSION_HANDSHAKE payload)."""
    if hs.read_message(payload):
        raise CryptoError()
    return LiveChannel(SecureChannel.from_handshake(hs, rekey_every=REKEY_EVERY, pad=True))


def respond(
    keys: NodeKeys,
    controller: IdentityCard,
    payload: bytes,
    *,
    relay_key: bytes,
    rng: Rng = nacl.utils.random,
) -> tuple[LiveChannel, bytes]:
    """Machine: answer a controller's first message; returns the channel and the reply."""
    hs = HandshakeState(
        LIVE_PROTOCOL,
        initiator=False,
        prologue=live_prologue(relay_key, controller.sign_public, keys.sign_public),
        s=KeyPair.from_private(keys.dh_private),
        rs=controller.dh_public,
        rng=rng,
    )
    if hs.read_message(payload):
        raise CryptoError()  # application data in message 1 is refused
    reply = wrap(Kind.SESSION_HANDSHAKE, hs.write_message(b""))
    return LiveChannel(SecureChannel.from_handshake(hs, rekey_every=REKEY_EVERY, pad=True)), reply


def reset_body() -> bytes:
    return wrap(Kind.SESSION_RESET)


__all__ = ["LiveChannel", "finish", "initiate", "live_prologue", "reset_body", "respond", "unwrap"]
