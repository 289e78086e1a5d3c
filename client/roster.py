"""Which machines the controller talks to: its pins, never the relay's word.

A machine's identity card is pinned when this controller paired it (the card was
checked against the fingerprint in the pairing code and the XXpsk3 handshake proved
the machine holds its keys; see :func:`starmux.client.actions.pair`). The relay's
machine list only says which of them are online. A relay that lies (its operator,
or whoever holds ``relay.key``) can therefore:

- hide a machine or call it offline (shown as "not listed by the relay"; nothing
  is deleted: only ``starmux revoke`` forgets a machine);
- list machines this controller never paired, or a paired machine's key with
  another card (reported and ignored: nothing is added and no channel is opened
  with a card the controller did not pin).

Pure: the listing and the pins in, the view and the warnings out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starmux.control import MachineInfo, MachineList
from starmux.errors import CryptoError, RemoteProtocolError, StarmuxError
from starmux.fingerprint import fingerprint
from starmux.identity import IdentityCard, Role

from .store import KnownMachine


class PinnedCardInvalid(StarmuxError):
    """A card in the controller's own database does not check out (damaged file)."""


@dataclass(frozen=True)
class RosterEntry:
    """A machine this controller paired, and what the relay says of it."""

    machine: KnownMachine
    card: IdentityCard  # the pinned card: the only one used for Noise_KK
    listing: MachineInfo | None  # None: not listed by the relay (or listed wrongly)

    @property
    def online(self) -> bool:
        return self.listing is not None and self.listing.online


@dataclass(frozen=True)
class Roster:
    entries: list[RosterEntry]
    warnings: list[str] = field(default_factory=list)


def pinned_card(machine: KnownMachine) -> IdentityCard:
    """The card stored at pairing, checked again: signed, a machine's, and its key."""
    try:
        card = IdentityCard.decode(machine.card)
    except (RemoteProtocolError, CryptoError) as exc:
        raise PinnedCardInvalid(
            f"the stored identity card of {printable(machine.name)} is damaged",
            hint="revoke the machine (`starmux revoke NAME`) and pair it again",
        ) from exc
    if card.role is not Role.MACHINE or card.sign_public != machine.key:
        raise PinnedCardInvalid(
            f"the stored identity card of {printable(machine.name)} is not its own",
            hint="revoke the machine (`starmux revoke NAME`) and pair it again",
        )
    return card


def reconcile(pinned: list[KnownMachine], listing: MachineList) -> Roster:
    """Match the relay's list against the pins; see the module docstring."""
    cards = {machine.key: pinned_card(machine) for machine in pinned}
    listed: dict[bytes, MachineInfo] = {}
    warnings: list[str] = []
    for info in listing.machines:
        card = cards.get(info.machine_key)
        if card is None:
            warnings.append(
                "the relay lists a machine this controller never paired: "
                f"{_listed_name(info)} (ignored)"
            )
        elif info.machine_key in listed:
            warnings.append(
                f"the relay lists {printable(card.name)} ({card.fingerprint}) twice "
                "(the repeat is ignored)"
            )
        elif not _same_card(info.card, card):
            warnings.append(
                f"the relay's card for {printable(card.name)} ({card.fingerprint}) is not "
                "the one pinned at pairing (ignored; only the pinned card is used)"
            )
        else:
            listed[info.machine_key] = info
    entries = [
        RosterEntry(machine, cards[machine.key], listed.get(machine.key)) for machine in pinned
    ]
    return Roster(entries, warnings)


def _same_card(listed: bytes, pinned: IdentityCard) -> bool:
    try:
        return IdentityCard.decode(listed) == pinned
    except (RemoteProtocolError, CryptoError):
        return False


def _listed_name(info: MachineInfo) -> str:
    key = info.machine_key
    where = fingerprint(key) if len(key) == 32 else f"a {len(key)}-byte key"
    try:
        card = IdentityCard.decode(info.card)
    except (RemoteProtocolError, CryptoError):
        return where
    return f"{printable(card.name)} ({where})"


def printable(text: str) -> str:
    """Remote text is escaped before it reaches a terminal: no control characters."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
