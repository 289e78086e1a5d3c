"""Linking a device, both ends in memory, both directions: the codes, the handshake,
the confirmations, the welcome."""

from __future__ import annotations

import pytest

from starmux.device_link import AFTER_ACCEPT, TRANSITIONS, LinkAttempt, Part, Phase
from starmux.device_log import DeviceLog, Op
from starmux.device_roles import DeviceRole
from starmux.errors import PairingCodeError, UsageError
from starmux.identity import NodeKeys, Role
from starmux.link_code import Direction, LinkCode, parse_link_code
from starmux.pairing import PairingAborted, PairingFailed, abort_body

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


def invite_code(role: DeviceRole = DeviceRole.VIEWER, secret: bytes = SECRET) -> LinkCode:
    return LinkCode(
        Direction.INVITE, "ws://127.0.0.1:1", "A" * 32, TICKET, OWNER.fingerprint, secret, role
    )


def join_code(secret: bytes = SECRET) -> LinkCode:
    return LinkCode(Direction.JOIN, "ws://127.0.0.1:1", "A" * 32, TICKET, PHONE.fingerprint, secret)


def invite(
    role: DeviceRole = DeviceRole.VIEWER, read_secret: bytes = SECRET
) -> tuple[LinkAttempt, LinkAttempt]:
    """(owner, new device) of an invite: the owner shows, the phone reads."""
    owner = LinkAttempt(
        OWNER, OWNER_CARD, invite_code(role), shows=True, relay_key=RELAY, account=ACCOUNT
    )
    phone = LinkAttempt(
        PHONE, PHONE_CARD, invite_code(role, read_secret), shows=False, relay_key=RELAY
    )
    return owner, phone


def join(
    role: DeviceRole = DeviceRole.OPERATOR, read_secret: bytes = SECRET
) -> tuple[LinkAttempt, LinkAttempt]:
    """(owner, new device) of a join: the phone shows, the owner reads."""
    phone = LinkAttempt(PHONE, PHONE_CARD, join_code(), shows=True, relay_key=RELAY)
    owner = owner_reading(join_code(read_secret), role)
    return owner, phone


def owner_reading(code: LinkCode, role: DeviceRole = DeviceRole.VIEWER) -> LinkAttempt:
    return LinkAttempt(
        OWNER, OWNER_CARD, code, shows=False, relay_key=RELAY, account=ACCOUNT, role=role
    )


def handshake(reader: LinkAttempt, shower: LinkAttempt) -> bytes | None:
    """Up to both ends confirming; returns what the shower's accept sends."""
    second = shower.receive(reader.start())
    assert second is not None and reader.receive(second) is None
    assert reader.phase is Phase.CONFIRMING
    third = reader.accept()
    assert third is not None and shower.receive(third) is None
    assert shower.phase is Phase.CONFIRMING
    return shower.accept()


def phase(end: LinkAttempt) -> Phase:
    return end.phase  # (read afresh: mypy would narrow the attribute across calls)


def log_adding(role: DeviceRole) -> DeviceLog:
    log = DeviceLog.genesis(OWNER, OWNER_CARD, ACCOUNT, at=1.0)
    return log.append(OWNER, Op.ADD, PHONE.sign_public, card=PHONE_CARD, role=role, at=2.0)[0]


def welcome_and_store(owner: LinkAttempt, phone: LinkAttempt, log: DeviceLog) -> None:
    stored = phone.receive(owner.welcome(log, (MACHINE_CARD,)))
    assert stored is not None and phone.phase is Phase.LINKED
    assert owner.receive(stored) is None and owner.phase is Phase.LINKED


def test_both_codes_round_trip_and_name_the_command_for_the_other_direction() -> None:
    for code in (invite_code(DeviceRole.OPERATOR), join_code()):
        parsed = parse_link_code(code.to_text(), code.direction)
        assert parsed.to_text() == code.to_text() and parsed.role is code.role
    assert invite_code().to_text().startswith("starmux://link/v1?")
    assert join_code().to_text().startswith("starmux://join/v1?")
    assert "role=" not in join_code().to_text()
    with pytest.raises(PairingCodeError, match="starmux devices add CODE"):
        parse_link_code(join_code().to_text(), Direction.INVITE)
    with pytest.raises(PairingCodeError, match="starmux link CODE"):
        parse_link_code(invite_code().to_text(), Direction.JOIN)
    with pytest.raises(PairingCodeError, match="machine pairing code"):
        parse_link_code("starmux://pair/v1?relay=ws://x", Direction.JOIN)
    text = invite_code(DeviceRole.OPERATOR).to_text()
    with pytest.raises(PairingCodeError):
        parse_link_code(text.replace("role=operator", "role=admin"), Direction.INVITE)
    with pytest.raises(PairingCodeError):
        parse_link_code(text.split("&role=")[0], Direction.INVITE)
    with pytest.raises(PairingCodeError):  # a role smuggled into a join code
        parse_link_code(join_code().to_text() + "&role=owner", Direction.JOIN)
    with pytest.raises(UsageError):
        LinkCode(
            Direction.JOIN,
            "ws://x:1",
            "A" * 32,
            TICKET,
            PHONE.fingerprint,
            SECRET,
            DeviceRole.OWNER,
        )


def test_an_invite_hands_over_the_account_log_and_machines() -> None:
    owner, phone = invite(DeviceRole.OPERATOR)
    assert (owner.part, phone.part) == (Part.OWNER, Part.NEW_DEVICE)
    assert handshake(phone, owner) is None  # the owner, last to confirm, appends next
    assert owner.phase is Phase.ADDING and phone.phase is Phase.AWAIT_WELCOME
    assert owner.comparison_code == phone.comparison_code != ""
    assert owner.other == PHONE_CARD and phone.other == OWNER_CARD
    welcome_and_store(owner, phone, log_adding(DeviceRole.OPERATOR))
    assert phone.log is not None and phone.log.head == log_adding(DeviceRole.OPERATOR).head
    assert [m.name for m in phone.machines] == ["box"] and phone.account == ACCOUNT


def test_a_join_waits_for_the_new_devices_confirmation_before_the_owner_adds() -> None:
    owner, phone = join(DeviceRole.OPERATOR)
    second = phone.receive(owner.start())
    assert second is not None and owner.receive(second) is None
    assert owner.other == PHONE_CARD  # the phone's card, before anything secret is sent
    third = owner.accept()
    assert phase(owner) is Phase.AWAIT_ACCEPTED  # not ADDING: the phone has not confirmed
    with pytest.raises(UsageError):
        owner.welcome(log_adding(DeviceRole.OPERATOR), ())
    assert third is not None and phone.receive(third) is None
    assert phone.other == OWNER_CARD and phone.account == ACCOUNT
    assert owner.comparison_code == phone.comparison_code != ""
    accepted = phone.accept()
    assert accepted is not None and owner.receive(accepted) is None
    assert phase(owner) is Phase.ADDING
    welcome_and_store(owner, phone, log_adding(DeviceRole.OPERATOR))
    assert phone.role is DeviceRole.OPERATOR  # the owner's pick, learnt from the log


@pytest.mark.parametrize("ends", [invite, join], ids=["invite", "join"])
def test_a_wrong_secret_fails_on_the_end_that_showed_the_code(ends: object) -> None:
    owner, phone = ends(read_secret=bytes(32))  # type: ignore[operator]
    reader, shower = (phone, owner) if owner.shows else (owner, phone)
    second = shower.receive(reader.start())
    assert second is not None and reader.receive(second) is None
    third = reader.accept()
    assert third is not None
    with pytest.raises(PairingFailed, match="wrong or stale"):
        shower.receive(third)
    assert shower.phase is Phase.FAILED
    with pytest.raises(PairingAborted):
        reader.receive(abort_body())


def test_an_invite_welcome_must_add_this_device_with_the_promised_role() -> None:
    owner, phone = invite(DeviceRole.VIEWER)
    handshake(phone, owner)
    with pytest.raises(PairingFailed, match="as the code promised"):
        phone.receive(owner.welcome(log_adding(DeviceRole.OWNER), ()))


def test_a_join_welcome_must_add_this_device() -> None:
    owner, phone = join()
    accepted = handshake(owner, phone)
    assert accepted is not None and owner.receive(accepted) is None
    other = keys("other")
    log = DeviceLog.genesis(OWNER, OWNER_CARD, ACCOUNT, at=1.0).append(
        OWNER,
        Op.ADD,
        other.sign_public,
        card=other.card(Role.CONTROLLER, "x"),
        role=DeviceRole.OPERATOR,
        at=2.0,
    )[0]
    with pytest.raises(PairingFailed, match="does not add this device"):
        phone.receive(owner.welcome(log, ()))


def test_another_shower_than_the_code_names_is_refused() -> None:
    other = keys("other")
    impostor_code = LinkCode(
        Direction.JOIN, "ws://127.0.0.1:1", "A" * 32, TICKET, other.fingerprint, SECRET
    )
    impostor = LinkAttempt(
        other, other.card(Role.CONTROLLER, "x"), impostor_code, shows=True, relay_key=RELAY
    )
    owner = owner_reading(join_code())
    with pytest.raises(PairingFailed):  # the prologue and the code name the phone
        owner.receive(impostor.receive(owner.start()) or b"")


def test_an_invite_transcript_cannot_complete_a_join() -> None:
    """The direction's domain is in the prologue: the same ticket, secret and shower
    under the other direction fails at the first authenticated message."""
    phone_shows = LinkAttempt(PHONE, PHONE_CARD, join_code(), shows=True, relay_key=RELAY)
    as_invite = LinkCode(
        Direction.INVITE, "ws://127.0.0.1:1", "A" * 32, TICKET, PHONE.fingerprint, SECRET,
        DeviceRole.VIEWER,
    )  # fmt: skip
    phone_as_invite = LinkAttempt(PHONE, PHONE_CARD, as_invite, shows=False, relay_key=RELAY)
    with pytest.raises(PairingFailed):
        phone_as_invite.receive(phone_shows.receive(phone_as_invite.start()) or b"")


def test_a_new_device_claiming_an_account_is_refused_by_the_owner() -> None:
    owner = owner_reading(join_code())
    sneaky = LinkAttempt(PHONE, PHONE_CARD, join_code(), shows=True, relay_key=RELAY)
    # A device of another account posing as a new one: it sends its account.
    sneaky.part, sneaky.account = Part.OWNER, bytes(16)
    with pytest.raises(PairingFailed, match="claims an account"):
        owner.receive(sneaky.receive(owner.start()) or b"")


def test_the_transition_table_is_closed() -> None:
    """Every phase a move or an accept leads to is one the table handles or final."""
    reachable = set(TRANSITIONS.values()) | set(AFTER_ACCEPT.values())
    handled = {phase for phase, _ in TRANSITIONS} | {Phase.CONFIRMING}
    assert reachable <= handled | {Phase.LINKED}
    owner, phone = invite()
    with pytest.raises(UsageError):
        owner.accept()  # nothing read yet
    with pytest.raises(PairingFailed, match="unexpected"):
        phone.receive(b"\x02")  # a transport message before anything
