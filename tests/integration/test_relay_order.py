"""Frames reach a peer in the order they were routed, whichever way the relay sends them.

A frame to a peer that is keeping up is written at once by the task that routed it;
a peer that is behind (socket buffer full) has its frames queued for its writer task,
and, once it catches up, is written to directly again (relay/peer.py). Here one
reader stops reading while frames pile up, then reads again: every frame arrives
once, in order, across both switches.
"""

from __future__ import annotations

import asyncio
import struct

from starmux.frames import FrameType
from starmux.identity import Role

from .conftest import RelayFactory
from .node import RelayNode
from .test_relay_memory import _metrics

FILLER = b"o" * 60_000
MiB = 1024 * 1024


def _numbered(number: int) -> bytes:
    return struct.pack(">I", number) + FILLER


async def _read_numbers(node: RelayNode, count: int) -> list[int]:
    return [
        struct.unpack(">I", (await node.recv_type(FrameType.DATA)).body[:4])[0]
        for _ in range(count)
    ]


async def test_frames_keep_their_order_from_direct_sends_to_the_queue_and_back(
    relay_factory: RelayFactory,
) -> None:
    # Bounds far above what this test queues: nobody is cut off as a slow consumer.
    relay = relay_factory(
        env={
            "STARMUX_RELAY_SEND_QUEUE_BYTES": str(256 * MiB),
            "STARMUX_RELAY_SEND_BUFFER_BUDGET": str(512 * MiB),
            "STARMUX_RELAY_SEND_QUEUE_FRAMES": "100000",
        }
    )
    node = RelayNode(Role.MACHINE)
    await node.connect(relay.url)  # any key may send frames to itself
    assert node.ws is not None
    # Keeping up: written at once.
    for number in range(20):
        await node.send(FrameType.DATA, node.key, _numbered(number))
    assert await _read_numbers(node, 20) == list(range(20))
    # Behind: the kernel buffers fill, then the relay queues.
    node.ws.transport.pause_reading()
    sent = 20
    while _metrics(relay.http_url)["starmux_relay_send_buffer_bytes"] == 0:
        for _ in range(10):
            await node.send(FrameType.DATA, node.key, _numbered(sent))
            sent += 1
        assert sent < 2000, "the relay never queued anything for a reader that stopped"
        await asyncio.sleep(0.05)  # the relay routes what was sent; no event to await
    # Reading again while more frames come: those must wait behind the queue.
    node.ws.transport.resume_reading()
    for number in range(sent, sent + 40):
        await node.send(FrameType.DATA, node.key, _numbered(number))
        await asyncio.sleep(0.002)  # spread over the queue's draining
    sent += 40
    assert await _read_numbers(node, sent - 20) == list(range(20, sent))
    # Caught up: direct again, still in order, nothing left queued.
    for number in range(sent, sent + 20):
        await node.send(FrameType.DATA, node.key, _numbered(number))
    assert await _read_numbers(node, 20) == list(range(sent, sent + 20))
    assert _metrics(relay.http_url)["starmux_relay_send_buffer_bytes"] == 0
    await node.close()
