"""Presence and ``devices-changed`` that crossed nodes while Redis was down are
not lost for good.

Devices hear of machines and devices on other nodes only through the bus; while
Redis is down those PRESENCE frames are dropped. When the bus is back, each node
tells its own controllers what changed in its view of the others (its snapshot),
re-says what its own peers did during the outage, and answers the re-announcement
of a node it had declared gone, so every device ends up with the truth whichever
node reconnects first; and a node's devices whose account's device log grew
meanwhile hear ``devices-changed`` (the log is in PostgreSQL). Here Redis restarts
empty (no persistence), the hardest case: the first node back sees nobody else.
"""

from __future__ import annotations

import time

from starmux.control import CONTROL, Notice, NoticeEvent, Presence
from starmux.device_roles import DeviceRole
from starmux.frames import FrameType
from starmux.identity import Role
from tests.integration.conftest import pair_machine, register_controller
from tests.integration.node import RelayNode
from tests.timeouts import scaled

from .conftest import RelayCluster
from .test_cluster_devices import add_device, frames_within, next_notice, with_log
from .test_cluster_failures import presence, wait_health


async def heard_until(device: RelayNode, expected: dict[bytes, bool]) -> dict[bytes, bool]:
    """PRESENCE frames to ``device`` until the last word about each key in
    ``expected`` is the expected one; returns the last word about every key heard."""
    last: dict[bytes, bool] = {}
    deadline = time.monotonic() + scaled(15)
    while any(last.get(key) is not online for key, online in expected.items()):
        left = deadline - time.monotonic()
        assert left > 0, f"still waiting: heard {last}, expected {expected}"
        frame = await device.recv_type(FrameType.PRESENCE, left)
        message = CONTROL.decode(frame.body)
        assert isinstance(message, Presence)
        last[frame.peer] = message.online
    return last


async def test_presence_missed_during_a_redis_outage_is_told_when_it_returns(
    cluster: RelayCluster,
) -> None:
    a, b = cluster.nodes
    owner, account = await register_controller(a, cluster.registration_token)
    log = await with_log(owner, account)
    phone = RelayNode(Role.CONTROLLER, "phone")
    log = await add_device(owner, log, phone, DeviceRole.VIEWER)
    await phone.connect(b.url)
    assert await presence(owner, phone.key, 10) is True
    stays = await pair_machine(b, owner, account, name="stays")
    leaves_b = await pair_machine(b, owner, account, name="leaves-b")
    leaves_a = await pair_machine(a, owner, account, name="leaves-a")
    returns = await pair_machine(b, owner, account, name="returns")
    for machine in (stays, leaves_b, leaves_a, returns):
        assert await presence(owner, machine.key, 10) is True
        assert await presence(phone, machine.key, 10) is True
    await returns.close()  # offline before the outage; back during it
    assert await presence(owner, returns.key, 10) is False
    assert await presence(phone, returns.key, 10) is False

    cluster.redis.stop()
    for node in (a, b):
        assert "cluster bus" in await wait_health(node, 503)
    await leaves_b.close()
    await leaves_a.close()
    tablet = RelayNode(Role.CONTROLLER, "tablet")
    await add_device(owner, log, tablet, DeviceRole.VIEWER)  # through node A
    returned = RelayNode(Role.MACHINE, keys=returns.keys)
    await returned.connect(b.url)
    # Across nodes nothing can be said now (same-node presence still flows).
    owner_heard = await frames_within(owner, 0.5)  # a bounded look: none is an absence
    assert not [f for f in owner_heard if f.peer in (leaves_b.key, returns.key)]
    assert not [f for f in await frames_within(phone, 0.1) if f.peer == leaves_a.key]

    cluster.redis.start()
    start = time.perf_counter()
    expected = {leaves_b.key: False, leaves_a.key: False, returns.key: True, stays.key: True}
    expected_by_phone = {**expected, owner.key: True}
    expected_by_owner = {**expected, phone.key: True}
    owner_last = await heard_until(owner, {leaves_b.key: False, returns.key: True})
    phone_last = await heard_until(phone, {leaves_a.key: False})
    # The notice the owner's node sent the phone when the tablet was added was lost.
    assert await next_notice(phone, NoticeEvent.DEVICES_CHANGED, b"") == Notice(
        NoticeEvent.DEVICES_CHANGED, b"", account, 0.0
    )
    print(f"\nRedis back: presence missed during the outage told on both nodes in "
          f"{time.perf_counter() - start:.2f} s")  # fmt: skip
    # Whatever else was said in passing (the first node back sees nobody and says
    # so; the other's re-announcement takes it back), the last word is the truth.
    for device, last, truth in ((owner, owner_last, expected_by_owner),
                                (phone, phone_last, expected_by_phone)):  # fmt: skip
        for frame in await frames_within(device, 1.0):  # a bounded look for stragglers
            if frame.type is FrameType.PRESENCE:
                message = CONTROL.decode(frame.body)
                assert isinstance(message, Presence)
                last[frame.peer] = message.online
        for key, online in truth.items():
            assert last.get(key, online) is online, (key.hex()[:8], last.get(key))
