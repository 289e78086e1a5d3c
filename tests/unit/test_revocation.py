"""Only a revocation signed by a controller the machine paired with counts (11.8)."""

from __future__ import annotations

import dataclasses

from starmux.control import MachineRevocation
from starmux.identity import NodeKeys
from starmux.relay_auth import revoke_transcript
from starmux.revocation import revoking_controller

ACCOUNT = b"a" * 16


def _signed(by: NodeKeys, machine: bytes, account: bytes = ACCOUNT) -> MachineRevocation:
    signature = by.sign(revoke_transcript(account, machine, 1000.0))
    return MachineRevocation(machine, account, by.sign_public, 1000.0, signature)


def test_a_paired_controllers_signature_counts() -> None:
    controller, machine = NodeKeys.generate(), NodeKeys.generate()
    paired = [(controller.sign_public, ACCOUNT)]
    revocation = _signed(controller, machine.sign_public)
    assert (
        revoking_controller(revocation, machine_key=machine.sign_public, controllers=paired)
        == controller.sign_public
    )


def test_what_the_relay_alone_can_produce_does_not_count() -> None:
    controller, machine, stranger = (NodeKeys.generate() for _ in range(3))
    paired = [(controller.sign_public, ACCOUNT)]
    genuine = _signed(controller, machine.sign_public)
    lies = [
        _signed(stranger, machine.sign_public),  # a key that never paired it
        dataclasses.replace(
            _signed(stranger, machine.sign_public), revoked_by=controller.sign_public
        ),
        dataclasses.replace(genuine, issued_at=1001.0),  # altered after signing
        dataclasses.replace(genuine, signature=bytes(64)),
        _signed(controller, NodeKeys.generate().sign_public),  # another machine's revoke
        _signed(controller, machine.sign_public, account=b"b" * 16),  # another account
    ]
    for lie in lies:
        assert (
            revoking_controller(lie, machine_key=machine.sign_public, controllers=paired) is None
        ), lie
    assert revoking_controller(genuine, machine_key=machine.sign_public, controllers=[]) is None
