"""The relay's device log requests, without a socket: real handlers, the real SQLite
registry and routing table (harness shared with test_relay_requests)."""

from __future__ import annotations

import dataclasses

import pytest

from starmux.close_codes import CloseCode
from starmux.control import (
    ListMachines,
    MachineList,
    Notice,
    NoticeEvent,
    Presence,
    ReportPairingFailure,
    SessionStatus,
    TicketCreated,
    TicketOpened,
)
from starmux.device_control import (
    AppendDeviceLog,
    CreateLinkTicket,
    DeviceLogAppended,
    DeviceLogState,
    DeviceSeen,
    GetDeviceLog,
    OpenLinkTicket,
)
from starmux.device_log import DeviceLog, LogEntry, Op, decode_entries, encode_entries, sign_entry
from starmux.device_roles import DeviceRole
from starmux.errors import DeviceLogError
from starmux.frames import FrameType
from starmux.identity import IdentityCard, Role
from starmux.relay.device_requests import install
from starmux.relay.registry import DeviceChange, RegistryError
from starmux.relay.requests import HANDLERS, announce_presence, greet_controller
from starmux.relay.routing import may_route

from .test_relay_requests import T0, Node, Relay, refused, revoke
from .test_relay_requests import relay as relay  # the fixture

install(HANDLERS)


def card_of(node: Node) -> IdentityCard:
    return IdentityCard.decode(node.peer.card)


async def with_log(relay: Relay) -> tuple[Node, DeviceLog]:
    owner = await relay.controller()
    log = DeviceLog.genesis(owner.keys, card_of(owner), owner.peer.account, at=T0)
    reply = await relay.ask(owner, AppendDeviceLog(1, log.encode(), b""))
    assert reply == DeviceLogAppended(1, 0, log.head.hash)
    return owner, log


async def linked(
    relay: Relay, owner: Node, log: DeviceLog, role: DeviceRole
) -> tuple[Node, DeviceLog]:
    """A new device added by ``owner`` and connected (it authenticates as a controller)."""
    device = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    log, entry = log.append(
        owner.keys, Op.ADD, device.keys.sign_public, card=card_of(device), role=role, at=T0
    )
    assert isinstance(
        await relay.ask(owner, AppendDeviceLog(2, encode_entries([entry]), b"")), DeviceLogAppended
    )
    record = await relay.state.registry.controller(device.keys.sign_public)
    assert record is not None and record.account == owner.peer.account
    relay.state.table.move_to_account(device.peer, record.account, SessionStatus.CONTROLLER)
    return device, log


async def test_a_legacy_account_has_no_log_until_its_device_uploads_the_first_entry(
    relay: Relay,
) -> None:
    owner = await relay.controller()
    state = await relay.ask(owner, GetDeviceLog(1, -1))
    assert isinstance(state, DeviceLogState) and decode_entries(state.entries) == ()
    assert state.online == (owner.peer.key,)
    # Nobody else may write an account's first entry, even a valid self-signed one.
    other = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    foreign = DeviceLog.genesis(other.keys, card_of(other), owner.peer.account, at=T0)
    assert await refused(relay, owner, AppendDeviceLog(2, foreign.encode(), b"")) == "forbidden"
    assert await refused(relay, other, AppendDeviceLog(2, foreign.encode(), b"")) == "forbidden"
    mine = DeviceLog.genesis(owner.keys, card_of(owner), owner.peer.account, at=T0)
    assert isinstance(
        await relay.ask(owner, AppendDeviceLog(3, mine.encode(), b"")), DeviceLogAppended
    )
    state = await relay.ask(owner, GetDeviceLog(4, -1))
    assert isinstance(state, DeviceLogState)
    assert DeviceLog.verify(decode_entries(state.entries)).head == mine.head


async def test_an_added_device_is_a_controller_and_every_device_hears_of_it(relay: Relay) -> None:
    owner, log = await with_log(relay)
    viewer, log = await linked(relay, owner, log, DeviceRole.VIEWER)
    notices = [m for t, _, m in await owner.messages(2) if t is FrameType.NOTICE]
    changed = Notice(NoticeEvent.DEVICES_CHANGED, b"", owner.peer.account, 0.0)
    assert notices == [changed, changed]  # its first entry, then the add
    assert isinstance(await relay.ask(viewer, ListMachines(5)), MachineList)
    state = await relay.ask(viewer, GetDeviceLog(6, 0))  # only what comes after entry 0
    assert isinstance(state, DeviceLogState)
    assert [e.seq for e in decode_entries(state.entries)] == [1]
    assert set(state.online) == {owner.peer.key, viewer.peer.key}


async def test_a_removed_device_is_told_closed_and_no_longer_a_controller(relay: Relay) -> None:
    owner, log = await with_log(relay)
    operator, log = await linked(relay, owner, log, DeviceRole.OPERATOR)
    log, entry = log.append(owner.keys, Op.REMOVE, operator.keys.sign_public, at=T0 + 1)
    await relay.ask(owner, AppendDeviceLog(3, encode_entries([entry]), b""))
    await operator.socket.until(lambda: operator.socket.closed is not None)
    assert operator.socket.closed is not None
    assert operator.socket.closed[0] == CloseCode.DEVICE_REMOVED
    assert [m for _, _, m in await operator.messages(1)][-1] == Notice(
        NoticeEvent.DEVICE_REMOVED, operator.keys.sign_public, owner.peer.account, 0.0
    )
    assert relay.state.metrics.closes[int(CloseCode.DEVICE_REMOVED)] == 1
    assert relay.state.table.get(operator.keys.sign_public) is None
    registry = relay.state.registry
    assert await registry.controller(operator.keys.sign_public) is None
    assert await registry.is_removed_device(operator.keys.sign_public)
    assert [c.key for c in await registry.controllers_of(owner.peer.account)] == [owner.peer.key]


async def test_tampered_forked_and_stale_logs_are_refused(relay: Relay) -> None:
    owner, log = await with_log(relay)
    viewer, log = await linked(relay, owner, log, DeviceRole.VIEWER)
    # Signed by a viewer: not an owner.
    forged = sign_entry(
        viewer.keys,
        log.account,
        2,
        log.head.hash,
        Op.SET_ROLE,
        viewer.keys.sign_public,
        b"",
        "owner",
        T0,
    )
    assert (
        await refused(relay, viewer, AppendDeviceLog(3, encode_entries([forged]), b"")) == "bad-log"
    )
    # Another entry 1 on the same genesis: a fork.
    stranger = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    fork = DeviceLog.verify(log.entries[:1]).append(
        owner.keys,
        Op.ADD,
        stranger.keys.sign_public,
        card=card_of(stranger),
        role=DeviceRole.OWNER,
        at=T0,
    )[1]
    assert await refused(relay, owner, AppendDeviceLog(4, encode_entries([fork]), b"")) == "bad-log"
    # The first entry alone again: an older head than the relay holds.
    assert (
        await refused(relay, owner, AppendDeviceLog(5, encode_entries(log.entries[:1]), b""))
        == "bad-log"
    )
    assert await relay.state.registry.controller(stranger.keys.sign_public) is None
    assert relay.state.metrics.drops["bad-device-log"] == 3


async def test_the_relay_enforces_roles_for_what_it_does_itself(relay: Relay) -> None:
    owner, machine = await relay.paired()
    log = DeviceLog.genesis(owner.keys, card_of(owner), owner.peer.account, at=T0)
    await relay.ask(owner, AppendDeviceLog(1, log.encode(), b""))
    operator, log = await linked(relay, owner, log, DeviceRole.OPERATOR)
    assert (
        await refused(relay, operator, revoke(owner, machine.peer.key, by=operator))
        == "forbidden-role"
    )
    assert machine.socket.closed is None


async def test_appends_are_compare_and_set_on_the_head(relay: Relay) -> None:
    owner, _ = await with_log(relay)
    with pytest.raises(RegistryError) as caught:
        await relay.state.registry.append_device_log(
            owner.peer.account, after_seq=-1, rows=[], change=DeviceChange((), ()), by=b"", now=T0
        )
    assert caught.value.code == "log-moved"


def adding(
    log: DeviceLog, owner: Node, device: Node, role: DeviceRole = DeviceRole.VIEWER
) -> tuple[DeviceLog, LogEntry]:
    return log.append(
        owner.keys, Op.ADD, device.keys.sign_public, card=card_of(device), role=role, at=T0
    )


@pytest.mark.parametrize("direction", ["invite", "join"])
async def test_a_link_ticket_is_consumed_by_the_append_that_adds_its_device(
    relay: Relay, direction: str
) -> None:
    """Either way round: an owner's link code (the owner holds the ticket, the new
    device opens it) or a new device's join code (it holds, an owner opens)."""
    owner, log = await with_log(relay)
    newcomer = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    holder, opener = (owner, newcomer) if direction == "invite" else (newcomer, owner)
    created = await relay.ask(holder, CreateLinkTicket(1))
    assert isinstance(created, TicketCreated)
    if direction == "join":  # only an owner reads a join code
        viewer, log = await linked(relay, owner, log, DeviceRole.VIEWER)
        assert await refused(relay, viewer, OpenLinkTicket(2, created.ticket)) == "forbidden-role"
    opened = await relay.ask(opener, OpenLinkTicket(2, created.ticket))
    assert opened == TicketOpened(2, holder.peer.key)
    assert may_route(newcomer.peer, owner.peer) and may_route(owner.peer, newcomer.peer)
    # The append must add the device at the other end of the ticket, nobody else.
    _, wrong = adding(log, owner, relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED))
    wrong_append = AppendDeviceLog(3, encode_entries([wrong]), created.ticket)
    assert await refused(relay, owner, wrong_append) == "mismatch"
    log, entry = adding(log, owner, newcomer)
    reply = await relay.ask(owner, AppendDeviceLog(4, encode_entries([entry]), created.ticket))
    assert isinstance(reply, DeviceLogAppended)
    assert newcomer.peer.status is SessionStatus.CONTROLLER
    assert newcomer.peer.account == owner.peer.account
    # Single use: the code cannot link anyone else.
    late = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    again = late if opener is newcomer else owner
    assert await refused(relay, again, OpenLinkTicket(5, created.ticket)) == "consumed"
    # The owner's welcome still reaches the new device over the ticket.
    assert may_route(owner.peer, newcomer.peer)


@pytest.mark.parametrize("direction", ["invite", "join"])
async def test_failed_link_attempts_burn_the_ticket_and_tell_its_holder(
    relay: Relay, direction: str
) -> None:
    owner, _ = await with_log(relay)
    newcomer = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    holder, opener = (owner, newcomer) if direction == "invite" else (newcomer, owner)
    created = await relay.ask(holder, CreateLinkTicket(1))
    assert isinstance(created, TicketCreated)
    stranger = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    for attempt in range(3):
        assert isinstance(await relay.ask(opener, OpenLinkTicket(2, created.ticket)), TicketOpened)
        # A third connection cannot burn it; each end can report its attempt once.
        assert (
            await refused(relay, stranger, ReportPairingFailure(3, created.ticket)) == "forbidden"
        )
        reporter = holder if attempt % 2 else opener
        assert isinstance(
            await relay.ask(reporter, ReportPairingFailure(4, created.ticket)), TicketOpened
        )
        assert (
            await refused(relay, reporter, ReportPairingFailure(5, created.ticket)) == "forbidden"
        )
    assert await refused(relay, opener, OpenLinkTicket(6, created.ticket)) == "burnt"
    burnt = Notice(NoticeEvent.TICKET_BURNT, created.ticket, b"", 0.0)
    assert burnt in [m for t, _, m in await holder.messages(1) if t is FrameType.NOTICE]


async def test_every_device_hears_a_removal_and_sees_the_others_presence(relay: Relay) -> None:
    owner, log = await with_log(relay)
    viewer, log = await linked(relay, owner, log, DeviceRole.VIEWER)
    operator, log = await linked(relay, owner, log, DeviceRole.OPERATOR)
    greet_controller(relay.state, viewer.peer)  # what the endpoint does on connect

    def presence_from(node: Node) -> set[bytes]:
        return {f.peer for f in node.socket.frames if f.type is FrameType.PRESENCE}

    await viewer.socket.until(lambda: len(presence_from(viewer)) >= 2)
    assert presence_from(viewer) == {owner.peer.key, operator.peer.key}  # not itself
    before = len(viewer.socket.frames)
    log, entry = log.append(owner.keys, Op.REMOVE, operator.keys.sign_public, at=T0 + 1)
    await relay.ask(owner, AppendDeviceLog(3, encode_entries([entry]), b""))
    frames = [(t, p, m) for t, p, m in await viewer.messages(before + 3)][before:]
    account = owner.peer.account
    assert frames == [
        (FrameType.PRESENCE, operator.peer.key, Presence(False, T0)),
        (
            FrameType.NOTICE,
            b"",
            Notice(NoticeEvent.DEVICE_REMOVED, operator.keys.sign_public, account, 0.0),
        ),
        (FrameType.NOTICE, b"", Notice(NoticeEvent.DEVICES_CHANGED, b"", account, 0.0)),
    ]
    # A device that leaves is announced to the others, and last seen when it left.
    relay.now = T0 + 60
    assert relay.state.table.detach(viewer.peer)
    announce_presence(relay.state, viewer.peer, online=False)
    await relay.state.registry.touch(viewer.peer.key, now=relay.now)
    gone = (FrameType.PRESENCE, viewer.peer.key, Presence(False, T0 + 60))
    assert gone in await owner.messages(len(owner.socket.frames))
    relay.now = T0 + 90
    state = await relay.ask(owner, GetDeviceLog(4, log.head.seq))
    assert isinstance(state, DeviceLogState)
    assert state.online == (owner.peer.key,)
    assert set(state.last_seen) == {
        DeviceSeen(owner.peer.key, T0 + 90),
        DeviceSeen(viewer.peer.key, T0 + 60),
    }


async def test_the_relay_verifies_each_stored_entry_once_and_never_trusts_changed_rows(
    relay: Relay,
) -> None:
    owner, log = await with_log(relay)
    viewer, log = await linked(relay, owner, log, DeviceRole.VIEWER)
    logs = relay.state.verified_logs
    await relay.ask(owner, GetDeviceLog(1, -1))
    before = logs.verified_entries
    for request_id in range(2, 7):  # reads and role checks: nothing verified again
        await relay.ask(viewer, GetDeviceLog(request_id, -1))
    assert await refused(relay, viewer, CreateLinkTicket(7)) == "forbidden-role"
    assert logs.verified_entries == before
    _, log = await linked(relay, owner, log, DeviceRole.OPERATOR)
    await relay.ask(owner, GetDeviceLog(8, -1))
    assert logs.verified_entries == before + 1  # only the new entry
    # Rows changed under the relay are verified from the first entry, and refused.
    rows = await relay.state.registry.device_log(owner.peer.account)
    forged = sign_entry(
        viewer.keys, log.account, 1, log.entries[0].hash, Op.ADD,
        viewer.keys.sign_public, viewer.peer.card, "owner", T0,
    )  # fmt: skip
    swapped = [rows[0], dataclasses.replace(rows[1], entry=encode_entries([forged])), *rows[2:]]
    with pytest.raises(DeviceLogError):
        logs.log(owner.peer.account, swapped)
