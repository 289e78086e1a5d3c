"""The unpaired machine's pairing offer, sans-I/O: tickets, attempts, burning, confirmation.

::

    await-ticket ──ticket──▶ offering ──first message──▶ handshaking
         ▲                      ▲  ▲                        │ handshake done
         │ expired / burnt      │  │ failed, aborted,       ▼
         └──────────────────────┘  │ cancelled, declined  confirming (with --confirm)
                                   │                        │ the person says yes
                                   └──────────────────── await-grant ──grant──▶ paired

The adapter (``daemon/runtime.py``) only pumps: it feeds relay events, the clock and
the person's answer in, and carries the returned effects out (request a ticket,
show a code, send a DATA body, report a failure, ask the person, store the pairing).

Invariants:

- One controller at a time: while an attempt runs, DATA from any other peer is
  ignored (the relay links only the ticket's opener anyway).
- Each failed attempt counts exactly once, on the side that noticed it: a failure
  here is reported to the relay (and the controller is told with PAIR_ABORT); a
  PAIR_ABORT received means the controller reported it. A PAIR_CANCEL (the person
  on the controller pressed Ctrl-C) counts nothing: the code stays usable, as it
  does when the same controller simply starts again (a fresh first message).
- When the attempts reach the relay's limit the code is dead: a new ticket is asked
  for at once, never a dead code shown until it expires.
- With ``confirm`` the machine accepts nothing before its own person confirmed
  the comparison code: the handshake's acceptance is held back until then.
- Time (``now``) and randomness (``rng``) are parameters; no I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import nacl.utils

from .e2e import Kind
from .errors import UsageError
from .fingerprint import fingerprint
from .identity import IdentityCard, NodeKeys
from .messages import PairingGranted
from .pairing import MachinePairing, PairingFailed, abort_body
from .pairing_code import SECRET_SIZE, PairingCode

Rng = Callable[[int], bytes]
#: the relay's default ``ticket_max_failures``; a code is dead after that many
DEFAULT_MAX_FAILURES = 3
#: the size of XXpsk3's first message: ``-> e`` (32) and the empty payload's tag (16:
#: with a PSK the ``e`` token already mixes a key in). Only a fresh attempt is this size.
FIRST_MESSAGE_SIZE = 32 + 16


class OfferState(enum.StrEnum):
    AWAIT_TICKET = "await-ticket"
    OFFERING = "offering"
    HANDSHAKING = "handshaking"
    CONFIRMING = "confirming"
    AWAIT_GRANT = "await-grant"
    PAIRED = "paired"


#: the whole truth about which state may follow which
TRANSITIONS: dict[OfferState, frozenset[OfferState]] = {
    OfferState.AWAIT_TICKET: frozenset({OfferState.OFFERING}),
    OfferState.OFFERING: frozenset({OfferState.HANDSHAKING, OfferState.AWAIT_TICKET}),
    OfferState.HANDSHAKING: frozenset(
        {
            OfferState.HANDSHAKING,  # the same controller started again
            OfferState.CONFIRMING,
            OfferState.AWAIT_GRANT,
            OfferState.OFFERING,
            OfferState.AWAIT_TICKET,
        }
    ),
    OfferState.CONFIRMING: frozenset(
        {
            OfferState.AWAIT_GRANT,
            OfferState.HANDSHAKING,
            OfferState.OFFERING,
            OfferState.AWAIT_TICKET,
        }
    ),
    OfferState.AWAIT_GRANT: frozenset(
        {OfferState.PAIRED, OfferState.HANDSHAKING, OfferState.OFFERING, OfferState.AWAIT_TICKET}
    ),
    OfferState.PAIRED: frozenset(),
}


# --- effects: what the adapter must do --------------------------------------------


@dataclass(frozen=True)
class RequestTicket:
    pass


@dataclass(frozen=True)
class ShowCode:
    code: PairingCode
    expires_at: float


@dataclass(frozen=True)
class SendData:
    peer: bytes
    body: bytes


@dataclass(frozen=True)
class ReportFailure:
    ticket: bytes


@dataclass(frozen=True)
class AskConfirmation:
    controller: IdentityCard
    comparison_code: str


@dataclass(frozen=True)
class Say:
    """Something for the person at the machine (``event`` names it for JSON output)."""

    event: str
    text: str


@dataclass(frozen=True)
class Paired:
    controller: IdentityCard
    account: bytes
    grant: PairingGranted
    comparison_code: str


Effect = RequestTicket | ShowCode | SendData | ReportFailure | AskConfirmation | Say | Paired


class PairingOffer:
    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        *,
        relay_url: str,
        relay_key: bytes,
        confirm: bool = False,
        private_name: str = "",
        max_failures: int = DEFAULT_MAX_FAILURES,
        rng: Rng = nacl.utils.random,
    ) -> None:
        self._keys = keys
        self._card = card
        self._relay_url = relay_url
        self._relay_key = relay_key
        self._confirm = confirm
        self._private_name = private_name
        self._max_failures = max_failures
        self._rng = rng
        self.state = OfferState.AWAIT_TICKET
        self.ticket = b""
        self.expires_at = 0.0
        self.failures = 0
        self.partner: bytes | None = None
        self._secret = b""
        self._responder: MachinePairing | None = None
        self._held_acceptance = b""

    def _go(self, new: OfferState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise UsageError(f"the pairing offer cannot go from {self.state} to {new}")
        self.state = new

    def start(self) -> list[Effect]:
        if self.state is not OfferState.AWAIT_TICKET or self.ticket:
            raise UsageError("the pairing offer was already started")
        return [RequestTicket()]

    # --- inputs ------------------------------------------------------------------

    def ticket_created(self, ticket: bytes, expires_at: float) -> list[Effect]:
        self._go(OfferState.OFFERING)
        self.ticket, self.expires_at, self.failures = ticket, expires_at, 0
        self._secret = self._rng(SECRET_SIZE)
        self._reset()
        code = PairingCode(
            self._relay_url,
            fingerprint(self._relay_key),
            ticket,
            self._keys.fingerprint,
            self._secret,
            expires_at,
        )
        return [ShowCode(code, expires_at)]

    def tick(self, now: float) -> list[Effect]:
        """The clock moved: an expired code is replaced."""
        if self.state in (OfferState.AWAIT_TICKET, OfferState.PAIRED) or now < self.expires_at:
            return []
        return self._renew(Say("ticket-expired", "the pairing code expired; here is a new one"))

    def ticket_burnt(self, ticket: bytes | None = None) -> list[Effect]:
        """The relay says ``ticket`` burnt (or we counted enough failures): replace it.
        A notice about an older ticket changes nothing."""
        if self.state in (OfferState.AWAIT_TICKET, OfferState.PAIRED):
            return []
        if ticket is not None and ticket != self.ticket:
            return []
        return self._renew(
            Say(
                "ticket-burnt",
                "the pairing code was blocked after too many failed attempts; here is a new one",
            )
        )

    def data(self, peer: bytes, body: bytes) -> list[Effect]:
        """A DATA body from ``peer`` (a controller that opened the ticket, says the relay)."""
        if self.state in (OfferState.AWAIT_TICKET, OfferState.PAIRED):
            return []
        if self.partner is not None and peer != self.partner:
            return []  # one controller at a time
        kind = body[:1]
        if kind == bytes((Kind.PAIR_CANCEL,)):
            if self.partner is None:
                return []
            self._back_to_offering()
            return [Say("pairing-cancelled", "the controller cancelled; the code stays valid")]
        if kind == bytes((Kind.PAIR_ABORT,)):
            if self.partner is None:
                return []
            # The controller gave up and reported it: count it, do not report again.
            return self._failed(Say("pairing-aborted", "the controller ended the attempt"))
        if self.state is OfferState.CONFIRMING and not _is_first_message(body):
            # Nothing may move the attempt on before the person here said yes.
            return [
                SendData(peer, abort_body()),
                ReportFailure(self.ticket),
                *self._failed(
                    Say("pairing-failed", "the controller went on before this machine confirmed")
                ),
            ]
        if self.partner is not None and _is_first_message(body):
            # The same controller started again (its last try died): not a failure.
            self._reset()
            self._go(OfferState.HANDSHAKING)
        elif self.partner is None:
            self._go(OfferState.HANDSHAKING)
        self.partner = peer
        assert self._responder is not None
        try:
            reply = self._responder.receive(body)
        except PairingFailed as exc:
            return [
                SendData(peer, abort_body()),
                ReportFailure(self.ticket),
                *self._failed(Say("pairing-failed", f"pairing attempt failed: {exc}")),
            ]
        responder = self._responder
        if responder.grant is not None and responder.controller_card is not None:
            self._go(OfferState.PAIRED)
            out: list[Effect] = [] if reply is None else [SendData(peer, reply)]
            return [
                *out,
                Paired(
                    responder.controller_card,
                    responder.account,
                    responder.grant,
                    responder.comparison_code,
                ),
            ]
        if self.state is OfferState.HANDSHAKING and responder.controller_card is not None:
            assert reply is not None  # the encrypted acceptance
            card, code = responder.controller_card, responder.comparison_code
            handshake = Say(
                "pairing-handshake",
                f"controller {card.fingerprint} is pairing; comparison code: {code}",
            )
            if self._confirm:
                self._go(OfferState.CONFIRMING)
                self._held_acceptance = reply
                return [handshake, AskConfirmation(card, code)]
            self._go(OfferState.AWAIT_GRANT)
            return [SendData(peer, reply), handshake]
        return [] if reply is None else [SendData(peer, reply)]

    def answered(self, yes: bool) -> list[Effect]:
        """The person at the machine answered the comparison question."""
        if self.state is not OfferState.CONFIRMING or self.partner is None:
            return []  # the attempt ended meanwhile; the answer is moot
        peer = self.partner
        if yes:
            self._go(OfferState.AWAIT_GRANT)
            acceptance, self._held_acceptance = self._held_acceptance, b""
            return [SendData(peer, acceptance)]
        return [
            SendData(peer, abort_body()),
            ReportFailure(self.ticket),
            *self._failed(
                Say("pairing-declined", "pairing refused: the comparison code was not confirmed")
            ),
        ]

    # --- helpers -------------------------------------------------------------------

    def _failed(self, why: Say) -> list[Effect]:
        self.failures += 1
        if self.failures >= self._max_failures:
            return [why, *self.ticket_burnt()]
        self._back_to_offering()
        return [why]

    def _renew(self, why: Say) -> list[Effect]:
        self._go(OfferState.AWAIT_TICKET)
        self.partner, self._responder, self._held_acceptance = None, None, b""
        return [why, RequestTicket()]

    def _back_to_offering(self) -> None:
        self._go(OfferState.OFFERING)
        self._reset()

    def _reset(self) -> None:
        self.partner = None
        self._held_acceptance = b""
        self._responder = MachinePairing(
            self._keys,
            self._card,
            relay_key=self._relay_key,
            ticket=self.ticket,
            secret=self._secret,
            private_name=self._private_name,
            rng=self._rng,
        )


def _is_first_message(body: bytes) -> bool:
    return body[:1] == bytes((Kind.PAIR_HANDSHAKE,)) and len(body) == 1 + FIRST_MESSAGE_SIZE
