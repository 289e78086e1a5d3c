"""What both registries (SQLite, PostgreSQL) read back the same way: their rows in
one column order, turned into records, and the checks on a ticket row, so both refuse
in the same order with the same codes."""

from __future__ import annotations

from typing import Any

from starmux.control import FailureCode
from starmux.relay.registry import (
    ControllerRecord,
    DeviceChange,
    MachineRecord,
    RegistryError,
    TicketRecord,
)

SELECT_MACHINE = (
    "SELECT m.key, m.account, m.card, m.granted_by, m.grant_signature, m.grant_issued_at,"
    " m.paired_at, m.last_seen, r.revoked_at"
    " FROM machines AS m LEFT JOIN revocations AS r ON r.key = m.key"
)
# A removed device keeps its row (machines name it as their granter) but is no
# longer a controller: every lookup leaves removed keys out.
SELECT_CONTROLLER = (
    "SELECT key, account, card, created_at, last_seen FROM controllers"
    " WHERE key NOT IN (SELECT key FROM removed_devices)"
)
#: A ticket row's columns (each registry adds its own placeholder for the ticket).
TICKET_COLUMNS = (
    "ticket, machine_key, machine_card, created_at, expires_at, failures,"
    " opened_by, consumed_at, burnt"
)


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def controller_record(row: Any) -> ControllerRecord:
    return ControllerRecord(
        bytes(row[0]), bytes(row[1]), bytes(row[2]), float(row[3]), opt_float(row[4])
    )


def machine_record(row: Any) -> MachineRecord:
    key, account, card, granted_by, signature, issued_at, paired_at, seen, revoked = row
    return MachineRecord(
        bytes(key), bytes(account), bytes(card), bytes(granted_by), bytes(signature),
        float(issued_at), float(paired_at), opt_float(seen), opt_float(revoked),
    )  # fmt: skip


def ticket_record(row: Any) -> TicketRecord:
    ticket, key, card, created_at, expires_at, failures, opened_by, consumed_at, _ = row
    return TicketRecord(
        bytes(ticket), bytes(key), bytes(card), float(created_at), float(expires_at),
        int(failures), None if opened_by is None else bytes(opened_by), opt_float(consumed_at),
    )  # fmt: skip


def check_usable_ticket(row: Any, now: float) -> None:
    """Refuse a ticket that cannot be opened or granted any more.

    Order: a finished ticket (consumed) says so before how it could not be used.
    ``row`` is a ticket row in :data:`TICKET_COLUMNS` order.
    """
    if row is None:
        raise RegistryError(FailureCode.UNKNOWN_TICKET, "no such pairing ticket")
    if row[7] is not None:
        raise RegistryError(FailureCode.CONSUMED, "this pairing ticket was already used")
    if row[8]:
        raise RegistryError(
            FailureCode.BURNT,
            "too many failed attempts on this pairing ticket",
            hint="restart pairing",
        )
    if now >= float(row[4]):
        raise RegistryError(
            FailureCode.EXPIRED, "this pairing ticket has expired", hint="restart pairing"
        )


def check_link_ticket(row: Any, now: float, *, by: bytes, change: DeviceChange) -> None:
    """Refuse consuming a link ticket for anything but the one device it links.

    Its two ends are the device that holds it (showed the code) and the one that
    opened it (read the code); one is the owner appending, the other the device
    added — whichever showed (an owner's invite, or a new device's join code)."""
    check_usable_ticket(row, now)
    added = [record.key for record in change.added]
    ends = {bytes(row[1]), None if row[6] is None else bytes(row[6])}
    if len(added) != 1 or ends != {by, added[0]}:
        raise RegistryError(FailureCode.MISMATCH, "this link ticket is not for that device")
