"""Ticket budgets and failure reports (issue 11, items 9 and 10, relay side).

- Ticket creation is budgeted per key and, more loosely, per address: one key (a
  throwaway one too) cannot spend the budget of the other daemons on its address.
- Only the two ends of a pairing attempt (the controller that opened the ticket, the
  machine holding it) may report its failure, and an attempt counts once.
- When a ticket burns, the machine holding it is told at once.
"""

from __future__ import annotations

from starmux.control import (
    CONTROL,
    CreateTicket,
    Failure,
    Notice,
    NoticeEvent,
    OpenTicket,
    ReportPairingFailure,
    TicketCreated,
    TicketOpened,
)
from starmux.frames import FrameType
from starmux.identity import Role

from .conftest import RelayFactory, register_controller
from .node import RelayNode, ok


async def _refused(node: RelayNode, request: object, code: str) -> None:
    reply = await node.request(request)  # type: ignore[arg-type]
    assert isinstance(reply, Failure) and reply.code == code, reply


async def test_ticket_budget_is_per_key_and_per_address(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        env={
            "STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE": "3",
            "STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE_PER_IP": "5",
        }
    )
    spender, neighbour, third = (RelayNode(Role.MACHINE) for _ in range(3))
    for node in (spender, neighbour, third):
        await node.connect(relay.url)
    for index in range(3):
        assert isinstance(ok(await spender.request(CreateTicket(index))), TicketCreated)
    await _refused(spender, CreateTicket(4), "rate-limited")  # its own budget is spent
    # Another daemon on the same address still gets its tickets...
    assert isinstance(ok(await neighbour.request(CreateTicket(1))), TicketCreated)
    assert isinstance(ok(await neighbour.request(CreateTicket(2))), TicketCreated)
    # ...until the address's own (larger) budget is spent.
    await _refused(third, CreateTicket(1), "rate-limited")
    # Elsewhere, nothing is spent.
    elsewhere = RelayNode(Role.MACHINE)
    await elsewhere.connect(relay.url, local_host="127.0.0.2")
    assert isinstance(ok(await elsewhere.request(CreateTicket(1))), TicketCreated)


async def _burn_notice(machine: RelayNode) -> Notice:
    frame = await machine.recv_type(FrameType.NOTICE)
    notice = CONTROL.decode(frame.body)
    assert isinstance(notice, Notice)
    return notice


async def test_only_the_attempt_reports_failures_each_once_and_a_burn_is_announced(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(args=["--open-registration"])  # ticket_max_failures = 3
    controller, _ = await register_controller(relay, token="")
    machine = RelayNode(Role.MACHINE, "holder")
    await machine.connect(relay.url)
    created = ok(await machine.request(CreateTicket(1)))
    assert isinstance(created, TicketCreated)
    ticket = created.ticket
    opened = ok(await controller.request(OpenTicket(2, ticket)))
    assert isinstance(opened, TicketOpened)

    # Strangers who learnt the ticket id cannot burn it: an unpaired connection...
    stranger = RelayNode(Role.MACHINE, "stranger")
    await stranger.connect(relay.url)
    for index in range(5):
        await _refused(stranger, ReportPairingFailure(index, ticket), "forbidden")
    # ...nor another account's controller that never opened it.
    other, _ = await register_controller(relay, token="", name="other")
    await _refused(other, ReportPairingFailure(1, ticket), "forbidden")

    # First attempt: both ends report the same failure; it counts once.
    ok(await machine.request(ReportPairingFailure(3, ticket)))
    await _refused(controller, ReportPairingFailure(4, ticket), "forbidden")
    # Second attempt: the controller opens again; this time it reports first.
    assert isinstance(ok(await controller.request(OpenTicket(5, ticket))), TicketOpened)
    ok(await controller.request(ReportPairingFailure(6, ticket)))
    await _refused(machine, ReportPairingFailure(7, ticket), "forbidden")
    assert not machine.pending  # no notice yet: two failures, not three
    # Third attempt: the ticket burns, and its machine hears of it at once.
    assert isinstance(ok(await controller.request(OpenTicket(8, ticket))), TicketOpened)
    ok(await machine.request(ReportPairingFailure(9, ticket)))
    notice = await _burn_notice(machine)
    assert notice.event is NoticeEvent.TICKET_BURNT and notice.subject == ticket
    await _refused(controller, OpenTicket(10, ticket), "burnt")
