"""Device removal and the REVOKED notice across relay nodes (relay-level nodes on
chosen nodes, as in test_cluster_failures: each test says which node holds whom).

- A device linked through node A and removed through node B while still connected
  to A is cut off on A (``device-removed`` notice, close 4004, counted there) in
  under a second, and refused by every node afterwards.
- A removal made while Redis is down lands when Redis is back (PostgreSQL is the
  truth: the node re-reads which of its devices were removed).
- A machine revoked through node A: the account's devices on node B hear what one
  node would tell them (REVOKED notice, presence offline), and a machine held by
  node B gets the REVOKED notice *and* the signed revocation before 4003.

Timings are measured and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from starmux.close_codes import CloseCode
from starmux.control import (
    CONTROL,
    MachineRevocation,
    Notice,
    NoticeEvent,
    TicketCreated,
    TicketOpened,
)
from starmux.device_control import AppendDeviceLog, CreateLinkTicket, OpenLinkTicket
from starmux.device_log import DeviceLog, Op, encode_entries
from starmux.device_roles import DeviceRole
from starmux.frames import Frame, FrameType
from starmux.identity import Role
from starmux.revocation import revoking_controller
from tests.integration.conftest import pair_machine, register_controller
from tests.integration.node import RelayNode, ok
from tests.integration.relay_process import RelayProcess
from tests.timeouts import scaled

from .conftest import RelayCluster
from .test_cluster_failures import presence, revoke, wait_health

REMOVED = 'starmux_relay_closes_total{code="4004"}'


async def with_log(owner: RelayNode, account: bytes) -> DeviceLog:
    """The account's first device log entry, written by its owner."""
    log = DeviceLog.genesis(owner.keys, owner.card, account, at=time.time())
    ok(await owner.request(AppendDeviceLog(10, log.encode(), b"")))
    return log


async def add_device(
    owner: RelayNode, log: DeviceLog, device: RelayNode, role: DeviceRole, ticket: bytes = b""
) -> DeviceLog:
    log, entry = log.append(
        owner.keys, Op.ADD, device.key, card=device.card, role=role, at=time.time()
    )
    ok(await owner.request(AppendDeviceLog(11, encode_entries([entry]), ticket)))
    return log


async def remove_device(owner: RelayNode, log: DeviceLog, device: RelayNode) -> DeviceLog:
    log, entry = log.append(owner.keys, Op.REMOVE, device.key, at=time.time())
    ok(await owner.request(AppendDeviceLog(12, encode_entries([entry]), b"")))
    return log


async def link_through(node: RelayProcess, owner: RelayNode, log: DeviceLog) -> tuple[
    RelayNode, DeviceLog
]:  # fmt: skip
    """A new device linked with a link code, as `starmux link` does: it connects to
    ``node`` (in no account yet), opens the owner's link ticket, and joins the
    account in place when the owner's add entry lands."""
    created = ok(await owner.request(CreateLinkTicket(20)))
    assert isinstance(created, TicketCreated)
    device = RelayNode(Role.CONTROLLER, "phone")
    await device.connect(node.url)
    opened = ok(await device.request(OpenLinkTicket(21, created.ticket)))
    assert isinstance(opened, TicketOpened) and opened.machine_key == owner.key
    return device, await add_device(owner, log, device, DeviceRole.OPERATOR, created.ticket)


async def until_closed(node: RelayNode, timeout: float = 10.0) -> tuple[list[Frame], int]:
    """Every frame the relay sends ``node`` (after those already read), and its close code."""
    frames = list(node.pending)
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                frames.append(await node.recv(timeout))
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "connection dropped without a close frame"
        return frames, closed.rcvd.code


async def frames_within(node: RelayNode, seconds: float) -> list[Frame]:
    """What the relay sends ``node`` in the next ``seconds`` (and what was kept)."""
    frames, node.pending = list(node.pending), []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(await node.recv(left))
        except TimeoutError:
            break
    return frames


def notices(frames: list[Frame]) -> list[object]:
    return [CONTROL.decode(f.body) for f in frames if f.type is FrameType.NOTICE]


async def refused_everywhere(cluster: RelayCluster, device: RelayNode, code: CloseCode) -> None:
    for node in cluster.nodes:
        again = RelayNode(device.role, keys=device.keys)
        with pytest.raises(websockets.ConnectionClosed) as refused:
            await again.connect(node.url)
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == code


async def test_a_device_removed_through_one_node_is_cut_off_on_the_other(
    cluster: RelayCluster,
) -> None:
    a, b = cluster.nodes
    a.registration_token = cluster.registration_token
    owner, account = await register_controller(a)
    log = await with_log(owner, account)
    device, log = await link_through(a, owner, log)  # linked and connected through A
    # The owner goes over to node B; the device stays on A.
    await owner.close()
    owner = RelayNode(Role.CONTROLLER, "laptop", keys=owner.keys)
    await owner.connect(b.url)
    removed_before = cluster.metric(0, REMOVED)

    cut = asyncio.create_task(until_closed(device))
    start = time.perf_counter()
    await remove_device(owner, log, device)
    frames, code = await cut
    elapsed = time.perf_counter() - start
    print(f"\ndevice removed through node B was cut off on node A in {elapsed * 1000:.1f} ms")
    assert code == CloseCode.DEVICE_REMOVED
    assert elapsed < 1.0
    assert notices(frames)[-1] == Notice(NoticeEvent.DEVICE_REMOVED, device.key, account, 0.0)
    assert cluster.metric(0, REMOVED) == removed_before + 1  # counted where it was held
    await refused_everywhere(cluster, device, CloseCode.DEVICE_REMOVED)


async def test_a_removal_made_while_redis_is_down_lands_when_it_returns(
    cluster: RelayCluster,
) -> None:
    a, b = cluster.nodes
    owner, account = await register_controller(b, cluster.registration_token)
    log = await with_log(owner, account)
    device = RelayNode(Role.CONTROLLER, "phone")
    log = await add_device(owner, log, device, DeviceRole.VIEWER)
    await device.connect(a.url)
    kept = RelayNode(Role.CONTROLLER, "tablet")
    log = await add_device(owner, log, kept, DeviceRole.VIEWER)
    await kept.connect(a.url)

    cluster.redis.stop()
    for node in (a, b):
        assert "cluster bus" in await wait_health(node, 503)
    await remove_device(owner, log, device)  # PostgreSQL takes it; the bus cannot
    cut = asyncio.create_task(until_closed(device, timeout=30))
    await asyncio.sleep(0.5)  # a bounded look: no event exists for "not cut yet"
    assert not cut.done(), "nothing can reach node A while Redis is down"

    cluster.redis.start()
    start = time.perf_counter()
    frames, code = await cut
    print(f"\nRedis back: the removal made while it was down landed in "
          f"{time.perf_counter() - start:.2f} s")  # fmt: skip
    assert code == CloseCode.DEVICE_REMOVED
    assert notices(frames)[-1] == Notice(NoticeEvent.DEVICE_REMOVED, device.key, account, 0.0)
    assert cluster.metric(0, "starmux_relay_cluster_bus_events_total"
                          '{event="device_removals_applied"}') == 1  # fmt: skip
    await refused_everywhere(cluster, device, CloseCode.DEVICE_REMOVED)
    # The other device on that node is untouched, and hears that the log changed
    # (the owner's node told it while the bus was out: that notice was lost).
    changed = await kept.recv_type(FrameType.NOTICE)
    assert CONTROL.decode(changed.body) == Notice(NoticeEvent.DEVICES_CHANGED, b"", account, 0.0)
    await wait_health(a, 200)
    assert kept.ws is not None and kept.ws.close_code is None


async def next_notice(node: RelayNode, event: NoticeEvent, subject: bytes) -> Notice:
    deadline = time.monotonic() + scaled(10)
    while True:
        frame = await node.recv_type(FrameType.NOTICE, deadline - time.monotonic())
        message = CONTROL.decode(frame.body)
        if isinstance(message, Notice) and (message.event, message.subject) == (event, subject):
            return message


async def test_a_revocation_through_one_node_reaches_the_devices_on_the_other(
    cluster: RelayCluster,
) -> None:
    """What one relay tells (relay/requests.py: revoke_machine): the machine gets the
    REVOKED notice then the controller's signed revocation, then 4003; every
    controller device of the account gets presence offline and the REVOKED notice.
    Here the revoking device is on node A, another device on node B, one machine on
    each node."""
    a, b = cluster.nodes
    a.registration_token = cluster.registration_token
    owner, account = await register_controller(a)
    log = await with_log(owner, account)
    phone = RelayNode(Role.CONTROLLER, "phone")
    await add_device(owner, log, phone, DeviceRole.VIEWER)
    await phone.connect(b.url)
    on_b = await pair_machine(b, owner, account, name="on-b")
    on_a = await pair_machine(a, owner, account, name="on-a")
    for machine in (on_b, on_a):
        for device in (owner, phone):
            assert await presence(device, machine.key, 10) is True

    for machine, where in ((on_b, "node B"), (on_a, "node A")):
        cut = asyncio.create_task(until_closed(machine))
        start = time.perf_counter()
        await revoke(owner, account, machine)
        frames, code = await cut
        elapsed = time.perf_counter() - start
        assert code == CloseCode.REVOKED
        said = notices(frames)
        assert said[-2] == Notice(NoticeEvent.REVOKED, machine.key, account, 0.0)
        proof = said[-1]
        assert isinstance(proof, MachineRevocation)
        assert (proof.machine_key, proof.account, proof.revoked_by) == (
            machine.key,
            account,
            owner.key,
        )
        for device in (owner, phone):
            assert await next_notice(device, NoticeEvent.REVOKED, machine.key) == Notice(
                NoticeEvent.REVOKED, machine.key, account, 0.0
            )
            assert await presence(device, machine.key, 10) is False
        print(f"\nmachine on {where} revoked through node A: cut off and every device told"
              f" in {(time.perf_counter() - start) * 1000:.1f} ms (machine closed after "
              f"{elapsed * 1000:.1f} ms)")  # fmt: skip
        assert elapsed < 1.0
    # Nothing more about them: one offline and one notice each, no repeat.
    for device in (owner, phone):
        later = await frames_within(device, 0.3)  # a bounded look: none is an absence
        about = [f for f in later if f.peer in (on_a.key, on_b.key)]
        about += [f for f in later if f.type is FrameType.NOTICE]
        assert not about, about


async def test_a_revocation_made_while_redis_is_down_reaches_the_devices_on_the_other_node(
    cluster: RelayCluster,
) -> None:
    """Through node A while Redis is down: the machine on node B is cut off when
    Redis returns (from PostgreSQL), and the device on node B, whose REVOKED notice
    from node A was lost with the bus, hears it then, with the presence."""
    a, b = cluster.nodes
    owner, account = await register_controller(a, cluster.registration_token)
    log = await with_log(owner, account)
    phone = RelayNode(Role.CONTROLLER, "phone")
    await add_device(owner, log, phone, DeviceRole.VIEWER)
    await phone.connect(b.url)
    machine = await pair_machine(b, owner, account)
    assert await presence(phone, machine.key, 10) is True

    cluster.redis.stop()
    for node in (a, b):
        assert "cluster bus" in await wait_health(node, 503)
    cut = asyncio.create_task(until_closed(machine, timeout=30))
    await revoke(owner, account, machine)  # PostgreSQL takes it; the bus cannot
    await asyncio.sleep(0.5)  # a bounded look: no event exists for "not told yet"
    assert not cut.done()
    assert not [f for f in await frames_within(phone, 0.1) if f.type is FrameType.NOTICE]

    cluster.redis.start()
    start = time.perf_counter()
    frames, code = await cut
    assert code == CloseCode.REVOKED
    # As on one node: the notice, then the controller's signed revocation (stored in
    # PostgreSQL with the revocation: node B never saw the request), then 4003.
    said = notices(frames)
    assert said[-2] == Notice(NoticeEvent.REVOKED, machine.key, account, 0.0)
    proof = said[-1]
    assert isinstance(proof, MachineRevocation)
    assert (proof.machine_key, proof.account, proof.revoked_by) == (machine.key, account, owner.key)
    # It verifies as the machine checks it before it forgets its keys.
    assert revoking_controller(proof, machine_key=machine.key, controllers=[(owner.key, account)])
    assert await next_notice(phone, NoticeEvent.REVOKED, machine.key) == Notice(
        NoticeEvent.REVOKED, machine.key, account, 0.0
    )
    assert await presence(phone, machine.key, 10) is False
    print(f"\nRedis back: the device on node B heard of the revocation made through node A"
          f" while Redis was down in {time.perf_counter() - start:.2f} s")  # fmt: skip
