"""The live channel (Noise_KK between a paired controller and machine), network-free:
who can complete the handshake, what the prologue binds, and that every failure is
final for the channel."""

from __future__ import annotations

import pytest

from starmux.channel import SecureChannel
from starmux.e2e import Kind, unwrap, wrap
from starmux.errors import CryptoError, RemoteProtocolError
from starmux.identity import NodeKeys, Role
from starmux.live_channel import (
    LIVE_PROTOCOL,
    LiveChannel,
    finish,
    initiate,
    live_prologue,
    reset_body,
    respond,
)
from starmux.messages import EventPage, LoggedEvent, SyncRequest
from starmux.noise import HandshakeState, KeyPair

from .deterministic import counter_rng

CONTROLLER = NodeKeys.generate(counter_rng(b"controller"))
MACHINE = NodeKeys.generate(counter_rng(b"machine"))
STRANGER = NodeKeys.generate(counter_rng(b"stranger"))
RELAY = NodeKeys.generate(counter_rng(b"relay")).sign_public
CONTROLLER_CARD = CONTROLLER.card(Role.CONTROLLER, "laptop")
MACHINE_CARD = MACHINE.card(Role.MACHINE, "box")


def payload(body: bytes, kind: Kind) -> bytes:
    got, inner = unwrap(body)
    assert got is kind
    return inner


def channels(seed: bytes = b"a") -> tuple[LiveChannel, LiveChannel]:
    """A completed handshake: (controller's channel, machine's channel)."""
    hs, first = initiate(CONTROLLER, MACHINE_CARD, relay_key=RELAY, rng=counter_rng(seed + b"c"))
    machine, reply = respond(
        MACHINE,
        CONTROLLER_CARD,
        payload(first, Kind.SESSION_HANDSHAKE),
        relay_key=RELAY,
        rng=counter_rng(seed + b"m"),
    )
    return finish(hs, payload(reply, Kind.SESSION_HANDSHAKE)), machine


def test_both_directions_carry_app_messages_in_order() -> None:
    controller, machine = channels()
    request = SyncRequest("0123456789abcdef", 4, 100)
    assert machine.open(payload(controller.seal(request), Kind.SESSION_TRANSPORT)) == request
    sent = [
        EventPage("0123456789abcdef", (LoggedEvent(n, 1.0, "s", b"x"),), False, True)
        for n in range(1, 4)
    ]
    bodies = [payload(machine.seal(page), Kind.SESSION_TRANSPORT) for page in sent]
    assert [controller.open(body) for body in bodies] == sent


def test_a_machine_refuses_a_controller_it_did_not_pair_with() -> None:
    _, first = initiate(STRANGER, MACHINE_CARD, relay_key=RELAY)
    with pytest.raises(CryptoError):
        respond(MACHINE, CONTROLLER_CARD, payload(first, Kind.SESSION_HANDSHAKE), relay_key=RELAY)


def test_a_controller_refuses_an_answer_from_another_machine() -> None:
    hs, first = initiate(CONTROLLER, MACHINE_CARD, relay_key=RELAY)
    # The stranger cannot read message 1 (it is bound to the machine's static key)...
    with pytest.raises(CryptoError):
        respond(STRANGER, CONTROLLER_CARD, payload(first, Kind.SESSION_HANDSHAKE), relay_key=RELAY)
    # ...and an answer it makes to its own handshake does not finish ours.
    _, first_to_stranger = initiate(CONTROLLER, STRANGER.card(Role.MACHINE, "x"), relay_key=RELAY)
    _, reply = respond(
        STRANGER,
        CONTROLLER_CARD,
        payload(first_to_stranger, Kind.SESSION_HANDSHAKE),
        relay_key=RELAY,
    )
    with pytest.raises(CryptoError):
        finish(hs, payload(reply, Kind.SESSION_HANDSHAKE))


def test_the_prologue_binds_the_relay() -> None:
    other_relay = NodeKeys.generate(counter_rng(b"other relay")).sign_public
    _, first = initiate(CONTROLLER, MACHINE_CARD, relay_key=other_relay)
    with pytest.raises(CryptoError):
        respond(MACHINE, CONTROLLER_CARD, payload(first, Kind.SESSION_HANDSHAKE), relay_key=RELAY)
    assert live_prologue(RELAY, CONTROLLER.sign_public, MACHINE.sign_public) != live_prologue(
        RELAY, MACHINE.sign_public, CONTROLLER.sign_public
    )


def test_application_data_in_the_first_message_is_refused() -> None:
    hs = HandshakeState(
        LIVE_PROTOCOL,
        initiator=True,
        prologue=live_prologue(RELAY, CONTROLLER.sign_public, MACHINE.sign_public),
        s=KeyPair.from_private(CONTROLLER.dh_private),
        rs=MACHINE.dh_public,
    )
    first = hs.write_message(b"run rm -rf /")  # the relay could replay this
    with pytest.raises(CryptoError):
        respond(MACHINE, CONTROLLER_CARD, first, relay_key=RELAY)


def test_a_tampered_answer_fails_the_handshake() -> None:
    hs, first = initiate(CONTROLLER, MACHINE_CARD, relay_key=RELAY)
    _, reply = respond(
        MACHINE, CONTROLLER_CARD, payload(first, Kind.SESSION_HANDSHAKE), relay_key=RELAY
    )
    inner = bytearray(payload(reply, Kind.SESSION_HANDSHAKE))
    inner[-1] ^= 1
    with pytest.raises(CryptoError):
        finish(hs, bytes(inner))


def test_every_handshake_has_fresh_keys_and_a_failure_is_final() -> None:
    old_controller, _ = channels(b"first")
    controller, machine = channels(b"second")
    stale = payload(old_controller.seal(SyncRequest("", 0, 1)), Kind.SESSION_TRANSPORT)
    with pytest.raises(CryptoError):
        machine.open(stale)
    assert machine.closed
    fresh = payload(controller.seal(SyncRequest("", 0, 1)), Kind.SESSION_TRANSPORT)
    with pytest.raises(CryptoError):
        machine.open(fresh)  # closed for good: a new handshake is the only way on


def test_a_replayed_message_fails() -> None:
    controller, machine = channels()
    body = payload(controller.seal(SyncRequest("", 0, 1)), Kind.SESSION_TRANSPORT)
    machine.open(body)
    with pytest.raises(CryptoError):
        machine.open(body)


def test_a_message_that_decrypts_but_does_not_decode_closes_the_channel() -> None:
    hs, first = initiate(CONTROLLER, MACHINE_CARD, relay_key=RELAY)
    responder = HandshakeState(
        LIVE_PROTOCOL,
        initiator=False,
        prologue=live_prologue(RELAY, CONTROLLER.sign_public, MACHINE.sign_public),
        s=KeyPair.from_private(MACHINE.dh_private),
        rs=CONTROLLER.dh_public,
    )
    responder.read_message(payload(first, Kind.SESSION_HANDSHAKE))
    reply = responder.write_message(b"")
    controller = finish(hs, reply)
    raw = SecureChannel.from_handshake(responder, rekey_every=10_000, pad=True)
    with pytest.raises(RemoteProtocolError):
        controller.open(raw.encrypt(b"\xc1 not msgpack"))
    assert controller.closed


def test_the_reset_body_is_a_bare_kind() -> None:
    assert reset_body() == wrap(Kind.SESSION_RESET)
    assert unwrap(reset_body()) == (Kind.SESSION_RESET, b"")
