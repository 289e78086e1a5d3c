"""Frames reach a peer in the order they were routed, whichever way the relay sends them.

A frame to a peer that is keeping up is written at once by the task that routed it;
a peer that is behind (socket buffer full) has its frames queued for its writer task,
and, once it catches up, is written to directly again (relay/peer.py). Here one
reader stops reading while frames pile up, then reads again: every frame arrives
once, in order, across both switches.

On the way in, a DATA frame in the encoding every node writes is routed as the
socket is read while the connection's task waits; anything else (a request, a DATA
frame in another valid encoding) goes through the task (relay/direct_frames.py).
Frames sent in one write, mixing both, come out in the order they went in.
"""

from __future__ import annotations

import asyncio
import struct

from starmux.control import CONTROL, ListMachines, MachineList
from starmux.frames import FrameType, encode_frame, parse_frame
from starmux.identity import Role

from .conftest import RelayFactory, register_controller
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


def _peer_as_bin16(key: bytes, body: bytes) -> bytes:
    """A DATA frame to ``key`` in valid msgpack that is not the canonical encoding
    (the peer key as bin16): the relay's task parses it in full."""
    canonical = encode_frame(FrameType.DATA, key, body)
    return bytes((0x93, int(FrameType.DATA), 0xC5, 0, 32)) + canonical[4:]


async def test_frames_read_directly_and_through_the_task_keep_their_order(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory()
    # A controller: its ListMachines requests are answered after a registry read, so
    # frames read while the relay's task waits for it must wait behind it.
    node, _account = await register_controller(relay)
    assert node.ws is not None
    sent: list[tuple[str, int]] = []
    frames: list[bytes] = []
    for number in range(360):
        body = struct.pack(">I", number) + b"x" * 200
        if number % 8 == 7:  # 45 requests: within the per-connection burst of 50
            frames.append(
                encode_frame(FrameType.REQUEST, b"", CONTROL.encode(ListMachines(number)))
            )
            sent.append(("response", number))
            continue
        slow = number % 10 == 3
        frames.append(
            _peer_as_bin16(node.key, body) if slow else encode_frame(FrameType.DATA, node.key, body)
        )
        sent.append(("data", number))
    assert parse_frame(frames[3]).peer == node.key  # the other encoding is still valid
    # Each request in a write of its own and what follows it in the next, both at
    # once: the relay's task is then at times still waiting for the registry when
    # the frames after the request are read (the case the task's order must cover),
    # while the frames between requests, mixing both encodings, come in one read.
    batch: list[bytes] = []
    for encoded, (kind, _number) in zip(frames, sent, strict=True):
        if kind == "response":
            _write(node, batch)
            _write(node, [encoded])
            batch = []
        else:
            batch.append(encoded)
    _write(node, batch)
    received: list[tuple[str, int]] = []
    while len(received) < len(sent):
        frame = await node.recv()
        if frame.type is FrameType.DATA:
            received.append(("data", struct.unpack(">I", frame.body[:4])[0]))
        else:
            assert frame.type is FrameType.RESPONSE, frame
            reply = CONTROL.decode(frame.body)
            assert isinstance(reply, MachineList), reply
            received.append(("response", reply.request_id))
    assert received == sent
    await node.close()


def _write(node: RelayNode, frames: list[bytes]) -> None:
    """``frames`` as WebSocket messages in one write."""
    assert node.ws is not None
    for frame in frames:
        node.ws.protocol.send_binary(frame)
    node.ws.transport.writelines(node.ws.protocol.data_to_send())
