"""A peer that never reads cannot pin relay memory (issue 11, item 3).

Send queues are bounded in bytes (queued frames plus the socket's write buffer), and
a relay-wide budget sheds the biggest queues first. The stalled readers here are real
clients whose sockets stop reading; no account is needed to fill a queue, since any
key may send frames to itself.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import websockets

from starmux.frames import FrameType
from starmux.identity import Role

from .conftest import RelayFactory
from .node import RelayNode

MiB = 1024 * 1024
PAYLOAD = b"m" * 60_000


def _metrics(relay_http: str) -> dict[str, float]:
    with urllib.request.urlopen(relay_http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _stalled(relay_url: str) -> RelayNode:
    node = RelayNode(Role.MACHINE)
    await node.connect(relay_url)
    assert node.ws is not None
    node.ws.transport.pause_reading()  # the kernel buffers fill, then the relay's
    return node


async def _flood_self(node: RelayNode, frames: int) -> int:
    """Send ``frames`` frames to ``node`` itself; how many were sent."""
    for sent in range(frames):
        try:
            await node.send(FrameType.DATA, node.key, PAYLOAD)
        except websockets.ConnectionClosed:
            return sent
    return frames


async def _wait_for(
    relay_http: str, name: str, at_least: float, timeout: float = 20.0
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = _metrics(relay_http)
        if values.get(name, 0.0) >= at_least:
            return values
        assert time.monotonic() < deadline, f"{name} never reached {at_least}: {values}"
        await asyncio.sleep(0.1)  # polling an HTTP endpoint: there is no event to await


async def _alive(node: RelayNode) -> bool:
    """Resume reading; True if the connection still routes an echo."""
    assert node.ws is not None
    node.ws.transport.resume_reading()
    try:
        await node.send(FrameType.DATA, node.key, b"still there?")
        while (await node.recv_type(FrameType.DATA, timeout=20)).body != b"still there?":
            pass
    except (websockets.ConnectionClosed, TimeoutError):
        return False
    return True


async def test_a_stalled_reader_is_cut_at_its_byte_bound(relay_factory: RelayFactory) -> None:
    bound = 2 * MiB
    relay = relay_factory(env={"STARMUX_RELAY_SEND_QUEUE_BYTES": str(bound)})
    assert relay.process is not None
    before = _rss_bytes(relay.process.pid)
    stalled = await _stalled(relay.url)
    # 600 frames of 60 kB (36 MB) is far under the 1,024-frame count limit, so only
    # the byte bound can stop it.
    await _flood_self(stalled, 600)
    values = await _wait_for(relay.http_url, 'starmux_relay_closes_total{code="4011"}', 1)
    assert values['starmux_relay_drops_total{reason="slow-consumer"}'] == 1
    after = _rss_bytes(relay.process.pid)
    print(f"relay RSS grew by {(after - before) / MiB:.1f} MiB for a 36 MB flood")
    assert values["starmux_relay_send_buffer_bytes"] == 0  # its queue is gone
    assert not await _alive(stalled)
    assert after - before < 16 * MiB


async def test_over_the_budget_the_biggest_queue_is_shed(relay_factory: RelayFactory) -> None:
    budget = 8 * MiB
    relay = relay_factory(
        env={
            "STARMUX_RELAY_SEND_QUEUE_BYTES": str(6 * MiB),
            "STARMUX_RELAY_SEND_BUFFER_BUDGET": str(budget),
        }
    )
    big, small = await _stalled(relay.url), await _stalled(relay.url)
    routed = 0  # frames sent so far, all of them routed (queued) unless a peer closed

    async def flood(node: RelayNode, frames: int) -> dict[str, float]:
        # The metrics are read once the relay has taken in every frame sent: frames
        # still in the sockets' buffers would otherwise land after the reading, and
        # push the big queue past its own bound (4011) before the budget is crossed.
        nonlocal routed
        routed += await _flood_self(node, frames)
        return await _wait_for(relay.http_url, "starmux_relay_frames_routed_total", routed)

    # The big one queues (past what the kernel buffers hold) until it holds ~5 MiB...
    sent = 0
    while (await flood(big, 10))["starmux_relay_send_buffer_bytes"] < 5 * MiB:
        sent += 10
        assert sent < 2000, "the relay never queued anything for a reader that stopped"
    # ...then the small one pushes the total over the budget.
    sent = 0
    while not (await flood(small, 5)).get('starmux_relay_drops_total{reason="memory-budget"}'):
        sent += 5
        assert sent < 2000, "the budget never shed anything"
    values = _metrics(relay.http_url)
    assert values['starmux_relay_drops_total{reason="memory-budget"}'] == 1
    assert values["starmux_relay_send_buffer_bytes"] <= budget
    assert not await _alive(big)
    assert await _alive(small)
