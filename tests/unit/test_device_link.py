"""Linking a device, both ends in memory: the code, the handshake, the welcome."""

from __future__ import annotations

import pytest

from starmux.device_link import Inviter, LinkCode, NewDevice, Phase, parse_link_code
from starmux.device_log import DeviceLog, Op
from starmux.device_roles import DeviceRole
from starmux.errors import PairingCodeError
from starmux.identity import NodeKeys, Role
from starmux.pairing import PairingFailed

from .deterministic import counter_rng

RELAY = NodeKeys.generate(counter_rng(b"relay")).sign_public
ACCOUNT = bytes(range(16))
TICKET = bytes(16)
SECRET = bytes(range(32))


def keys(name: str) -> NodeKeys:
    return NodeKeys.generate(counter_rng(name.encode()))


OWNER, PHONE = keys("owner"), keys("phone")
OWNER_CARD = OWNER.card(Role.CONTROLLER, "laptop")
PHONE_CARD = PHONE.card(Role.CONTROLLER, "phone")
MACHINE_CARD = keys("box").card(Role.MACHINE, "box").encode()


def code(role: DeviceRole = DeviceRole.VIEWER, secret: bytes = SECRET) -> LinkCode:
    return LinkCode("ws://127.0.0.1:1", "A" * 32, TICKET, OWNER.fingerprint, secret, role)


def ends(device_code: LinkCode) -> tuple[Inviter, NewDevice]:
    inviter = Inviter(
        OWNER, OWNER_CARD, account=ACCOUNT, relay_key=RELAY, ticket=TICKET, secret=SECRET
    )
    return inviter, NewDevice(PHONE, PHONE_CARD, device_code, relay_key=RELAY)


def handshake(inviter: Inviter, device: NewDevice) -> None:
    second = inviter.receive(device.start())
    assert second is not None
    third = device.receive(second)
    assert third is not None and inviter.receive(third) is None


def test_the_code_round_trips_and_refuses_a_pairing_code() -> None:
    original = code(DeviceRole.OPERATOR)
    assert parse_link_code(original.to_text()).to_text() == original.to_text()
    assert parse_link_code(original.to_text()).role is DeviceRole.OPERATOR
    with pytest.raises(PairingCodeError):
        parse_link_code("starmux://pair/v1?relay=ws://x")
    with pytest.raises(PairingCodeError):
        parse_link_code(original.to_text().replace("role=operator", "role=admin"))
    with pytest.raises(PairingCodeError):
        parse_link_code(original.to_text().split("&role=")[0])


def test_a_link_hands_over_the_account_log_and_machines() -> None:
    inviter, device = ends(code(DeviceRole.OPERATOR))
    handshake(inviter, device)
    assert inviter.comparison_code == device.comparison_code != ""
    assert inviter.device == PHONE_CARD and device.inviter == OWNER_CARD
    log = DeviceLog.genesis(OWNER, OWNER_CARD, ACCOUNT, at=1.0)
    log, _ = log.append(
        OWNER, Op.ADD, PHONE.sign_public, card=PHONE_CARD, role=DeviceRole.OPERATOR, at=2.0
    )
    stored = device.receive(inviter.welcome(log, (MACHINE_CARD,)))
    assert stored is not None and device.phase is Phase.LINKED
    assert device.log is not None and device.log.head == log.head
    assert [m.name for m in device.machines] == ["box"]
    assert inviter.receive(stored) is None and inviter.phase is Phase.LINKED


def test_a_wrong_secret_fails_on_the_inviter() -> None:
    inviter, device = ends(code(secret=bytes(32)))
    second = inviter.receive(device.start())
    assert second is not None
    third = device.receive(second)
    assert third is not None
    with pytest.raises(PairingFailed, match="wrong or stale"):
        inviter.receive(third)


def test_a_welcome_must_add_this_device_with_the_promised_role() -> None:
    inviter, device = ends(code(DeviceRole.VIEWER))
    handshake(inviter, device)
    log = DeviceLog.genesis(OWNER, OWNER_CARD, ACCOUNT, at=1.0)
    log, _ = log.append(
        OWNER, Op.ADD, PHONE.sign_public, card=PHONE_CARD, role=DeviceRole.OWNER, at=2.0
    )
    with pytest.raises(PairingFailed, match="as the code promised"):
        device.receive(inviter.welcome(log, ()))


def test_another_inviter_than_the_code_names_is_refused() -> None:
    other = keys("other")
    inviter = Inviter(
        other,
        other.card(Role.CONTROLLER, "x"),
        account=ACCOUNT,
        relay_key=RELAY,
        ticket=TICKET,
        secret=SECRET,
    )
    device = NewDevice(PHONE, PHONE_CARD, code(), relay_key=RELAY)
    with pytest.raises(PairingFailed):  # the prologue names the code's inviter
        inviter.receive(device.start())
