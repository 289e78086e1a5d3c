"""Pairing state machines, network-free: both ends wired directly together."""

from __future__ import annotations

import nacl.utils
import pytest

from starmux.e2e import Kind, unwrap, wrap
from starmux.identity import NodeKeys, Role
from starmux.pairing import ControllerPairing, MachinePairing, PairingFailed, abort_body
from starmux.pairing_code import PairingCode

RELAY = NodeKeys.generate().sign_public
ACCOUNT = nacl.utils.random(16)


def _parties(
    *, code_secret: bytes | None = None, code_machine: NodeKeys | None = None
) -> tuple[NodeKeys, ControllerPairing, NodeKeys, MachinePairing]:
    controller_keys, machine_keys = NodeKeys.generate(), NodeKeys.generate()
    ticket, secret = nacl.utils.random(16), nacl.utils.random(32)
    code = PairingCode(
        relay_url="ws://127.0.0.1:1",
        relay_fingerprint=NodeKeys.generate().fingerprint,
        ticket=ticket,
        machine_fingerprint=(code_machine or machine_keys).fingerprint,
        secret=code_secret or secret,
    )
    controller = ControllerPairing(
        controller_keys,
        controller_keys.card(Role.CONTROLLER, "laptop"),
        code,
        relay_key=RELAY,
        account=ACCOUNT,
    )
    machine = MachinePairing(
        machine_keys,
        machine_keys.card(Role.MACHINE, "box"),
        relay_key=RELAY,
        ticket=ticket,
        secret=secret,
    )
    return controller_keys, controller, machine_keys, machine


def test_happy_path_pairs_both_sides_with_the_same_code() -> None:
    controller_keys, controller, machine_keys, machine = _parties()
    second = machine.receive(controller.start(machine_keys.sign_public))
    assert second is not None
    third = controller.receive(second)
    assert third is not None
    accepted = machine.receive(third)
    assert accepted is not None
    assert controller.receive(accepted) is None
    assert controller.comparison_code == machine.comparison_code
    assert controller.machine_card is not None and controller.machine_card.name == "box"
    assert machine.controller_card is not None
    assert machine.controller_card.sign_public == controller_keys.sign_public
    signature, granted = controller.grant(controller_keys, issued_at=1000.0)
    stored = machine.receive(granted)
    assert stored is not None
    assert machine.grant is not None and machine.grant.signature == signature
    assert machine.account == ACCOUNT
    assert controller.receive(stored) is None
    assert controller.phase.value == machine.phase.value == "paired"


def test_wrong_secret_is_refused_by_the_machine() -> None:
    _, controller, machine_keys, machine = _parties(code_secret=nacl.utils.random(32))
    third = controller.receive(machine.receive(controller.start(machine_keys.sign_public)) or b"")
    with pytest.raises(PairingFailed, match="wrong or stale secret"):
        machine.receive(third or b"")
    with pytest.raises(PairingFailed, match="code is wrong or stale"):
        controller.receive(abort_body())


def test_wrong_fingerprint_in_code_is_refused_before_any_handshake() -> None:
    _, controller, machine_keys, _ = _parties(code_machine=NodeKeys.generate())
    with pytest.raises(PairingFailed, match=r"not .* as the code says"):
        controller.start(machine_keys.sign_public)


def test_impostor_machine_with_the_right_key_claim_fails() -> None:
    # The relay claims the right machine key, but a different machine answers.
    _, controller, machine_keys, _ = _parties()
    impostor_keys = NodeKeys.generate()
    first = controller.start(machine_keys.sign_public)
    impostor = MachinePairing(
        impostor_keys,
        impostor_keys.card(Role.MACHINE, "evil"),
        relay_key=RELAY,
        ticket=b"\0" * 16,
        secret=b"\0" * 32,
    )
    with pytest.raises(PairingFailed):
        controller.receive(impostor.receive(first) or b"")


def test_first_message_with_payload_is_refused() -> None:
    _, _, _, machine = _parties()
    from starmux.noise import HandshakeState, KeyPair

    hs = HandshakeState(
        "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b",
        initiator=True,
        s=KeyPair.generate(nacl.utils.random),
        psks=[b"\0" * 32],
    )
    with pytest.raises(PairingFailed):
        machine.receive(wrap(Kind.PAIR_HANDSHAKE, hs.write_message(b"data")))


def test_garbage_and_failures_are_final() -> None:
    _, controller, machine_keys, machine = _parties()
    with pytest.raises(PairingFailed):
        machine.receive(b"\xff")
    with pytest.raises(PairingFailed, match="already failed"):
        machine.receive(controller.start(machine_keys.sign_public))
    assert unwrap(abort_body()) == (Kind.PAIR_ABORT, b"")
