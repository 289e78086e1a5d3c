"""The machine's pairing offer as a state machine, network-free (issue 12 §3, 11.10,
13.7, 13.8, 11.17): a real ControllerPairing on the other end, no relay, no clock."""

from __future__ import annotations

import nacl.utils
import pytest

from starmux.errors import UsageError
from starmux.identity import NodeKeys, Role
from starmux.pairing import ControllerPairing, PairingAborted, abort_body, cancel_body
from starmux.pairing_code import PairingCode
from starmux.pairing_offer import (
    TRANSITIONS,
    AskConfirmation,
    Effect,
    OfferState,
    Paired,
    PairingOffer,
    ReportFailure,
    RequestTicket,
    SendData,
    ShowCode,
)

RELAY = NodeKeys.generate().sign_public
ACCOUNT = nacl.utils.random(16)
TICKET = b"t" * 16


def _offer(*, confirm: bool = False) -> tuple[PairingOffer, PairingCode]:
    keys = NodeKeys.generate()
    offer = PairingOffer(
        keys, keys.card(Role.MACHINE, "box"), relay_url="ws://r:1", relay_key=RELAY, confirm=confirm
    )
    assert offer.start() == [RequestTicket()]
    (shown,) = offer.ticket_created(TICKET, expires_at=1000.0)
    assert isinstance(shown, ShowCode) and offer.state is OfferState.OFFERING
    return offer, shown.code


def _controller(
    code: PairingCode, *, secret: bytes | None = None
) -> tuple[NodeKeys, ControllerPairing]:
    keys = NodeKeys.generate()
    if secret is not None:
        code = PairingCode(
            code.relay_url, code.relay_fingerprint, code.ticket, code.machine_fingerprint, secret
        )
    pairing = ControllerPairing(
        keys, keys.card(Role.CONTROLLER, "laptop"), code, relay_key=RELAY, account=ACCOUNT
    )
    return keys, pairing


def _sent(effects: list[Effect], peer: bytes) -> bytes:
    bodies = [e.body for e in effects if isinstance(e, SendData) and e.peer == peer]
    assert len(bodies) == 1, effects
    return bodies[0]


def _state(offer: PairingOffer) -> OfferState:
    return offer.state  # read afresh: mypy would keep an earlier assert's narrowing


def _machine_key(offer: PairingOffer) -> bytes:
    return offer._keys.sign_public


def _handshake(offer: PairingOffer, controller: ControllerPairing, peer: bytes) -> list[Effect]:
    """Run the controller's first two messages; returns the effects of the second."""
    second = _sent(offer.data(peer, controller.start(_machine_key(offer))), peer)
    third = controller.receive(second)
    assert third is not None
    return offer.data(peer, third)


def test_happy_path_pairs_and_reports_the_controller() -> None:
    offer, code = _offer()
    keys, controller = _controller(code)
    effects = _handshake(offer, controller, b"c1")
    assert offer.state is OfferState.AWAIT_GRANT
    assert controller.receive(_sent(effects, b"c1")) is None  # the acceptance
    _, grant = controller.grant(keys, issued_at=5.0)
    effects = offer.data(b"c1", grant)
    assert _state(offer) is OfferState.PAIRED
    paired = effects[-1]
    assert isinstance(paired, Paired)
    assert paired.controller.sign_public == keys.sign_public and paired.account == ACCOUNT
    assert paired.comparison_code == controller.comparison_code
    controller.receive(_sent(effects, b"c1"))  # PairingStored


def test_a_wrong_secret_counts_once_and_the_third_burns_the_code() -> None:
    offer, code = _offer()
    for attempt in (1, 2, 3):
        _, controller = _controller(code, secret=nacl.utils.random(32))
        effects = _handshake(offer, controller, b"c1")
        assert effects.count(ReportFailure(TICKET)) == 1  # the machine reports it
        # The controller reads the machine's abort as "already counted" (11.10).
        with pytest.raises(PairingAborted):
            controller.receive(_sent(effects, b"c1"))
        assert offer.failures == attempt % 3 or offer.state is OfferState.AWAIT_TICKET
    # The third failure: a fresh code at once, not a dead one until it expires.
    assert offer.state is OfferState.AWAIT_TICKET and effects[-1] == RequestTicket()


def test_an_abort_from_the_controller_counts_without_a_second_report() -> None:
    offer, code = _offer()
    _, controller = _controller(code)
    offer.data(b"c1", controller.start(_machine_key(offer)))
    effects = offer.data(b"c1", abort_body())
    assert not any(isinstance(e, ReportFailure) for e in effects)
    assert offer.failures == 1 and offer.state is OfferState.OFFERING


def test_a_cancel_counts_nothing_and_the_same_code_still_pairs() -> None:
    offer, code = _offer()
    keys, controller = _controller(code)
    effects = _handshake(offer, controller, b"c1")
    controller.receive(_sent(effects, b"c1"))
    # Ctrl-C at the controller's prompt.
    assert offer.data(b"c1", cancel_body())[0].event == "pairing-cancelled"  # type: ignore[union-attr]
    assert offer.failures == 0 and offer.state is OfferState.OFFERING
    keys, again = _controller(code)
    controller_reply = _sent(_handshake(offer, again, b"c1"), b"c1")
    again.receive(controller_reply)
    _, grant = again.grant(keys, issued_at=5.0)
    assert isinstance(offer.data(b"c1", grant)[-1], Paired)


def test_a_fresh_first_message_restarts_without_counting() -> None:
    offer, code = _offer()
    _, first = _controller(code)
    _handshake(offer, first, b"c1")  # then the controller process died
    _, second = _controller(code)
    effects = _handshake(offer, second, b"c1")
    assert offer.failures == 0 and offer.state is OfferState.AWAIT_GRANT
    second.receive(_sent(effects, b"c1"))


def test_other_controllers_are_ignored_during_an_attempt() -> None:
    offer, code = _offer()
    _, controller = _controller(code)
    offer.data(b"c1", controller.start(_machine_key(offer)))
    _, intruder = _controller(code)
    assert offer.data(b"c2", intruder.start(_machine_key(offer))) == []
    assert offer.data(b"c2", abort_body()) == []
    assert offer.partner == b"c1"


def test_confirm_holds_the_acceptance_until_the_person_says_yes() -> None:
    offer, code = _offer(confirm=True)
    keys, controller = _controller(code)
    effects = _handshake(offer, controller, b"c1")
    assert offer.state is OfferState.CONFIRMING
    assert not any(isinstance(e, SendData) for e in effects)
    (ask,) = [e for e in effects if isinstance(e, AskConfirmation)]
    assert ask.comparison_code == controller.comparison_code
    accepted = _sent(offer.answered(True), b"c1")
    controller.receive(accepted)
    _, grant = controller.grant(keys, issued_at=5.0)
    assert isinstance(offer.data(b"c1", grant)[-1], Paired)


def test_confirm_no_refuses_and_counts() -> None:
    offer, code = _offer(confirm=True)
    _, controller = _controller(code)
    _handshake(offer, controller, b"c1")
    effects = offer.answered(False)
    assert _sent(effects, b"c1") == abort_body()
    assert ReportFailure(TICKET) in effects and offer.failures == 1
    assert offer.state is OfferState.OFFERING
    assert offer.answered(True) == []  # a late answer changes nothing


def test_confirm_refuses_a_controller_that_does_not_wait() -> None:
    offer, code = _offer(confirm=True)
    _, controller = _controller(code)
    _handshake(offer, controller, b"c1")
    # A controller holding the secret sends something before the person here said yes.
    effects = offer.data(b"c1", b"\x02" + bytes(40))
    assert _sent(effects, b"c1") == abort_body()
    assert offer.state is OfferState.OFFERING


def test_expiry_asks_for_a_new_ticket() -> None:
    offer, _ = _offer()
    assert offer.tick(999.0) == []
    effects = offer.tick(1000.0)
    assert effects[-1] == RequestTicket() and offer.state is OfferState.AWAIT_TICKET
    assert offer.tick(2000.0) == []  # asked once


def test_the_table_refuses_illegal_transitions() -> None:
    assert TRANSITIONS[OfferState.PAIRED] == frozenset()
    offer, _ = _offer()
    with pytest.raises(UsageError):
        offer._go(OfferState.PAIRED)
    with pytest.raises(UsageError):
        offer.start()


def test_a_private_name_reaches_the_controller_only_inside_the_channel() -> None:
    keys = NodeKeys.generate()
    offer = PairingOffer(
        keys,
        keys.card(Role.MACHINE, "machine"),
        relay_url="ws://r:1",
        relay_key=RELAY,
        private_name="build-host-7f3q",
    )
    offer.start()
    (shown,) = offer.ticket_created(TICKET, expires_at=1000.0)
    assert isinstance(shown, ShowCode)
    _, controller = _controller(shown.code)
    effects = _handshake(offer, controller, b"c1")
    accepted = _sent(effects, b"c1")
    assert b"build-host-7f3q" not in accepted  # encrypted on the wire
    controller.receive(accepted)
    assert controller.machine_card is not None and controller.machine_card.name == "machine"
    assert controller.machine_name == "build-host-7f3q"


def test_the_relays_burn_notice_replaces_the_current_code_only() -> None:
    offer, _ = _offer()
    assert offer.ticket_burnt(b"o" * 16) == []  # an older ticket's notice
    effects = offer.ticket_burnt(TICKET)
    assert effects[-1] == RequestTicket() and offer.state is OfferState.AWAIT_TICKET
