"""Routing between a controller and its machines; nothing crosses accounts; limits."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from starmux.close_codes import CloseCode
from starmux.control import CONTROL, ListMachines, MachineList, Presence, RouteError
from starmux.frames import FrameType, encode_frame
from starmux.identity import Role

from .conftest import RelayFactory, pair_machine, register_controller
from .node import RelayNode, ok
from .relay_process import RelayProcess


async def test_controller_and_machine_exchange_frames(relay: RelayProcess) -> None:
    controller, account = await register_controller(relay)
    machine = await pair_machine(relay, controller, account)
    presence = await controller.recv_type(FrameType.PRESENCE)
    assert presence.peer == machine.key
    assert CONTROL.decode_as(presence.body, Presence).online is True

    await controller.send(FrameType.DATA, machine.key, b"ciphertext-1")
    delivered = await machine.recv_type(FrameType.DATA)
    assert (delivered.peer, delivered.body) == (controller.key, b"ciphertext-1")
    await machine.send(FrameType.DATA, controller.key, b"ciphertext-2")
    delivered = await controller.recv_type(FrameType.DATA)
    assert (delivered.peer, delivered.body) == (machine.key, b"ciphertext-2")

    listing = ok(await controller.request(ListMachines(5)))
    assert isinstance(listing, MachineList)
    assert [(m.machine_key, m.online) for m in listing.machines] == [(machine.key, True)]

    await machine.close()
    gone = await controller.recv_type(FrameType.PRESENCE)
    assert gone.peer == machine.key and CONTROL.decode_as(gone.body, Presence).online is False


async def test_nothing_crosses_accounts(relay_factory: RelayFactory) -> None:
    relay = relay_factory(args=["--open-registration"])
    alice, alice_account = await register_controller(relay, token="")
    bob, bob_account = await register_controller(relay, token="", name="bob")
    assert alice_account != bob_account
    alice_machine = await pair_machine(relay, alice, alice_account)
    bob_machine = await pair_machine(relay, bob, bob_account, name="bobs-box")

    for sender, target in (
        (bob, alice_machine),
        (alice_machine, bob),
        (bob_machine, alice),
        (alice, bob_machine),
        (bob_machine, alice_machine),
    ):
        await sender.send(FrameType.DATA, target.key, b"should not arrive")
        error = await sender.recv_type(FrameType.ERROR)
        assert error.peer == target.key
        assert CONTROL.decode_as(error.body, RouteError).code == "unreachable"
    # An offline or unknown key gives the same answer: no cross-account presence leak.
    await bob.send(FrameType.DATA, bytes(32), b"x")
    assert CONTROL.decode_as((await bob.recv_type(FrameType.ERROR)).body, RouteError).code == (
        "unreachable"
    )
    for node in (alice, alice_machine, bob, bob_machine):
        with pytest.raises(TimeoutError):
            await node.recv_type(FrameType.DATA, timeout=0.3)
    # Bob sees only his own machine.
    listing = ok(await bob.request(ListMachines(1)))
    assert isinstance(listing, MachineList)
    assert [m.machine_key for m in listing.machines] == [bob_machine.key]


async def _flowing(sender: RelayNode, receiver: RelayNode, count: int = 20) -> None:
    for index in range(count):
        await sender.send(FrameType.DATA, receiver.key, index.to_bytes(4, "big"))
    for index in range(count):
        frame = await receiver.recv_type(FrameType.DATA)
        # Frames another node sent earlier may still be on their way (a stalled
        # reader's producer has a backlog in the relay): only this sender's count.
        while frame.peer != sender.key:
            frame = await receiver.recv_type(FrameType.DATA)
        assert frame.body == index.to_bytes(4, "big")


async def test_oversize_frame_closes_only_that_connection(relay: RelayProcess) -> None:
    controller, account = await register_controller(relay)
    machine = await pair_machine(relay, controller, account)
    assert machine.ws is not None
    await machine.ws.send(encode_frame(FrameType.DATA, controller.key, b"") + b"\0" * 70_000)
    assert await machine.expect_close() == CloseCode.FRAME_TOO_LARGE
    # The controller is still connected and can talk to a new machine.
    second = await pair_machine(relay, controller, account, name="second")
    await _flowing(controller, second)


async def test_flood_is_cut_off_while_others_flow(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        env={"STARMUX_RELAY_FRAMES_PER_SECOND": "50", "STARMUX_RELAY_FRAME_BURST": "100"}
    )
    controller, account = await register_controller(relay)
    flooder = await pair_machine(relay, controller, account, name="flooder")
    calm = await pair_machine(relay, controller, account, name="calm")
    assert flooder.ws is not None
    frame = encode_frame(FrameType.DATA, controller.key, b"x" * 100)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(2000):
            await flooder.ws.send(frame)
        await flooder.ws.recv()
        while True:
            await flooder.ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.FLOOD
    while True:  # drain what the flooder got through before the cut
        try:
            await controller.recv_type(FrameType.DATA, timeout=0.3)
        except TimeoutError:
            break
    await _flowing(calm, controller)


async def test_stalled_reader_is_disconnected_and_others_flow(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        env={
            "STARMUX_RELAY_SEND_QUEUE_FRAMES": "64",
            "STARMUX_RELAY_PING_INTERVAL": "1",
            "STARMUX_RELAY_PING_TIMEOUT": "1",
        }
    )
    controller, account = await register_controller(relay)
    # The stalled controller never reads; a websockets client reads into its own
    # buffer in the background, so use a raw socket that really stops reading.
    stalled_machine = await pair_machine(relay, controller, account, name="producer")
    healthy = await pair_machine(relay, controller, account, name="healthy")
    # Stall the controller: pause its transport so the kernel buffers fill up.
    assert controller.ws is not None
    controller.ws.transport.pause_reading()
    payload = b"y" * 60_000
    sent = 0
    error_seen = False
    while sent < 2000:
        await stalled_machine.send(FrameType.DATA, controller.key, payload)
        sent += 1
        if sent % 50 == 0:
            try:
                frame = await stalled_machine.recv_type(FrameType.ERROR, timeout=0.01)
            except TimeoutError:
                continue
            error_seen = frame.peer == controller.key
            break
    assert error_seen, "the relay kept buffering for a reader that does not read"
    # The relay handles a connection's frames in order: once the producer's echo comes
    # back, none of its flood is still on the way to a controller with that key.
    await stalled_machine.send(FrameType.DATA, stalled_machine.key, b"echo")
    while (await stalled_machine.recv_type(FrameType.DATA)).body != b"echo":
        pass
    # Everyone else keeps flowing: the producer and the healthy machine can still be
    # reached by a fresh controller of the account.
    fresh = RelayNode(Role.CONTROLLER, keys=controller.keys)
    await fresh.connect(relay.url)
    await _flowing(healthy, fresh)
    await _flowing(fresh, stalled_machine)


async def test_bad_frames_close_with_protocol_error(relay: RelayProcess) -> None:
    controller, _ = await register_controller(relay)
    assert controller.ws is not None
    await controller.ws.send(b"\x93\x10\xc4\x05short\xc4\x00")  # peer of 5 bytes
    assert await controller.expect_close() == CloseCode.PROTOCOL_ERROR
    text = RelayNode(Role.CONTROLLER, keys=controller.keys)
    await text.connect(relay.url)
    assert text.ws is not None
    await text.ws.send("text is not a frame")
    assert await text.expect_close() == CloseCode.PROTOCOL_ERROR
    await asyncio.sleep(0)
