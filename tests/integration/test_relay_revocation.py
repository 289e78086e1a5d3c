"""A revoked machine is unroutable the moment the revocation is accepted (issue 11,
item 7), even when it does not read and its notice cannot be flushed."""

from __future__ import annotations

import time

import websockets

from starmux.control import CONTROL, MachineRevoked, RevokeMachine, RouteError
from starmux.frames import FrameType

from .conftest import RelayFactory, pair_machine, register_controller
from .node import ok

#: frames of 60 kB queued for the stalled machine: 36 MB, more than loopback's socket
#: buffers hold, so most of it waits in the relay when the revocation comes
BACKLOG = 600


async def test_no_frame_reaches_a_machine_after_its_revocation(
    relay_factory: RelayFactory,
) -> None:
    # A generous byte bound: the machine must stay connected, stalled, with a backlog.
    relay = relay_factory(env={"STARMUX_RELAY_SEND_QUEUE_BYTES": str(512 * 1024 * 1024)})
    controller, account = await register_controller(relay)
    machine = await pair_machine(relay, controller, account)
    assert machine.ws is not None
    machine.ws.transport.pause_reading()
    # A backlog the relay cannot flush to a machine that does not read: before the
    # fix, the revocation notice waited behind it and the machine stayed routable.
    for _ in range(BACKLOG):
        await controller.send(FrameType.DATA, machine.key, b"before" + bytes(60_000))
    now = time.time()
    revoked = ok(
        await controller.request(
            RevokeMachine(9, machine.key, now, controller.revocation(account, machine.key, now))
        )
    )
    assert isinstance(revoked, MachineRevoked)
    await controller.send(FrameType.DATA, machine.key, b"after the revocation")
    error = await controller.recv_type(FrameType.ERROR)
    assert error.peer == machine.key
    assert isinstance(CONTROL.decode(error.body), RouteError)
    # The machine reads again: nothing sent after the revocation ever reached it.
    machine.ws.transport.resume_reading()
    bodies = []
    try:
        while True:
            frame = await machine.recv(timeout=20)
            if frame.type is FrameType.DATA:
                bodies.append(frame.body)
    except websockets.ConnectionClosed:
        pass
    assert b"after the revocation" not in bodies
    assert all(body.startswith(b"before") for body in bodies)
    # It was cut off, not drained: most of the backlog was dropped with it.
    assert len(bodies) < BACKLOG
