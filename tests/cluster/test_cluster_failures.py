"""Revocation, a dead node and a Redis restart, with relay-level nodes on chosen
relay nodes (each test says which node holds whom; the balancer is not needed to
prove routing between nodes, and would only hide where a peer is).

Timings are measured and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request

import pytest
import websockets

from starmux.close_codes import CloseCode
from starmux.control import (
    CONTROL,
    Presence,
    RevokeMachine,
    SessionStatus,
    TicketCreated,
    TicketOpened,
)
from starmux.device_control import AppendDeviceLog, CreateLinkTicket, OpenLinkTicket
from starmux.device_log import DeviceLog, Op, encode_entries
from starmux.device_roles import DeviceRole
from starmux.frames import FrameType
from starmux.identity import Role
from tests.integration.conftest import pair_machine, register_controller
from tests.integration.node import RelayNode, ok
from tests.integration.relay_process import RelayProcess

from .conftest import RelayCluster


async def revoke(controller: RelayNode, account: bytes, machine: RelayNode) -> None:
    now = time.time()
    ok(
        await controller.request(
            RevokeMachine(9, machine.key, now, controller.revocation(account, machine.key, now))
        )
    )


async def presence(controller: RelayNode, key: bytes, timeout: float) -> bool:
    """The next PRESENCE about ``key``: True online, False offline."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await controller.recv_type(FrameType.PRESENCE, deadline - time.monotonic())
        if frame.peer == key:
            message = CONTROL.decode(frame.body)
            assert isinstance(message, Presence)
            return message.online


async def killed_then_offline(
    node: RelayProcess, watcher: RelayNode, key: bytes, what: str
) -> None:
    """Kill ``node``; ``watcher`` (on another node) hears that ``key`` went offline."""
    node.stop(signal.SIGKILL)
    start = time.perf_counter()
    assert await presence(watcher, key, 10) is False
    elapsed = time.perf_counter() - start
    print(f"\nnode killed: its {what} reported offline on the other node after {elapsed:.2f} s")
    assert elapsed < 5.0


def health(node: RelayProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(node.http_url + "/health", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def wait_health(node: RelayProcess, status: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await asyncio.to_thread(health, node)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/health stayed {code}: {body}"
        await asyncio.sleep(0.1)  # /health is a poll by nature


async def test_revocation_on_one_node_cuts_the_machine_on_the_other(
    cluster: RelayCluster,
) -> None:
    a, b = cluster.nodes
    a.registration_token = cluster.registration_token
    controller, account = await register_controller(a)
    machine = await pair_machine(b, controller, account)  # paired across nodes
    assert await presence(controller, machine.key, 10) is True

    closed = asyncio.create_task(machine.expect_close())
    start = time.perf_counter()
    await revoke(controller, account, machine)
    assert await closed == CloseCode.REVOKED
    elapsed = time.perf_counter() - start
    print(f"\nrevocation on node A cut the machine on node B in {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0

    # Refused everywhere from now on (the registry is the truth).
    for node in (a, b):
        again = RelayNode(Role.MACHINE, keys=machine.keys)
        with pytest.raises(websockets.ConnectionClosed) as refused:
            await again.connect(node.url)
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == CloseCode.REVOKED


async def test_a_dead_nodes_machines_go_offline_then_come_back(cluster: RelayCluster) -> None:
    a, b = cluster.nodes
    a.registration_token = cluster.registration_token
    controller, account = await register_controller(a)
    machine = await pair_machine(b, controller, account)
    assert await presence(controller, machine.key, 10) is True

    await killed_then_offline(b, controller, machine.key, "machine")

    back = RelayNode(Role.MACHINE, keys=machine.keys)
    await back.connect(a.url)
    assert await presence(controller, machine.key, 10) is True
    await controller.send(FrameType.DATA, machine.key, b"hello again")
    frame = await back.recv_type(FrameType.DATA)
    assert (frame.peer, frame.body) == (controller.key, b"hello again")


async def test_a_revocation_issued_while_redis_is_down_lands_when_it_returns(
    cluster: RelayCluster,
) -> None:
    a, b = cluster.nodes
    a.registration_token = cluster.registration_token
    controller, account = await register_controller(a)
    revoked = await pair_machine(b, controller, account, name="revoked")
    kept = await pair_machine(b, controller, account, name="kept")

    cluster.redis.stop()
    for node in (a, b):
        assert "cluster bus" in await wait_health(node, 503)
    assert cluster.metric(0, "starmux_relay_cluster_bus_up") == 0.0
    await revoke(controller, account, revoked)  # PostgreSQL takes it; the bus cannot
    closed = asyncio.create_task(revoked.expect_close(timeout=30))
    await asyncio.sleep(0.5)  # a bounded look: no event exists for "not cut yet"
    assert not closed.done(), "nothing can reach node B while Redis is down"

    cluster.redis.start()
    start = time.perf_counter()
    assert await closed == CloseCode.REVOKED
    print(f"\nRedis back: the revocation made while it was down landed in "
          f"{time.perf_counter() - start:.2f} s")  # fmt: skip
    for node in (a, b):
        await wait_health(node, 200)
    # Routing between the nodes works again.
    await controller.send(FrameType.DATA, kept.key, b"after the restart")
    frame = await kept.recv_type(FrameType.DATA)
    assert (frame.peer, frame.body) == (controller.key, b"after the restart")


async def test_a_device_joins_across_nodes_and_its_presence_crosses_them(
    cluster: RelayCluster,
) -> None:
    """The owner on node A adds a device that showed a join code on node B (the
    ticket's two ends on two nodes); the owner sees the device come online, then go
    offline when node B dies, and online again on node A."""
    a, b = cluster.nodes
    a.registration_token = cluster.registration_token
    owner, account = await register_controller(a)
    log = DeviceLog.genesis(owner.keys, owner.card, account, at=time.time())
    ok(await owner.request(AppendDeviceLog(2, log.encode(), b"")))
    device = RelayNode(Role.CONTROLLER, "browser")
    await device.connect(b.url)  # in no account yet
    created = ok(await device.request(CreateLinkTicket(3)))
    assert isinstance(created, TicketCreated)
    opened = ok(await owner.request(OpenLinkTicket(4, created.ticket)))
    assert isinstance(opened, TicketOpened) and opened.machine_key == device.key
    log, entry = log.append(
        owner.keys,
        Op.ADD,
        device.key,
        card=device.card,
        role=DeviceRole.VIEWER,
        at=time.time(),
    )
    ok(await owner.request(AppendDeviceLog(5, encode_entries([entry]), created.ticket)))
    assert await presence(owner, device.key, 10) is True  # joined in place, on node B

    await killed_then_offline(b, owner, device.key, "device")
    back = RelayNode(Role.CONTROLLER, "browser", keys=device.keys)
    assert (await back.connect(a.url)).status is SessionStatus.CONTROLLER
    assert await presence(owner, device.key, 10) is True
