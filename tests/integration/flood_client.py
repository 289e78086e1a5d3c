"""A flood of control requests and authentications from one address, as a process of
its own (so the test that measures others' latency does not share its event loop).

    python -m tests.integration.flood_client URL FLOODERS REQUESTS_EACH AUTHS

Prints ``connected`` once every flooder is authenticated, ``done`` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import websockets

from starmux.control import CONTROL, CreateTicket, RegisterAccount, ReportPairingFailure
from starmux.frames import FrameType
from starmux.identity import NodeKeys, Role

from .node import RelayNode

#: a registration token of the right shape that was never issued: only the registry
#: can tell, so without a limit each one is a write transaction
WRONG_TOKEN = "A" * 24


async def _flood_requests(node: RelayNode, count: int) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):  # the relay cuts floods off
        for number in range(count):
            if node.role is Role.MACHINE:
                request: object = (
                    CreateTicket(number) if number % 2 else ReportPairingFailure(number, bytes(16))
                )
            else:
                request = RegisterAccount(number, WRONG_TOKEN)
            await node.send(FrameType.REQUEST, b"", CONTROL.encode(request))  # type: ignore[arg-type]
    # Read the answers while closing: left unread they fill the client's receive queue,
    # it stops reading the socket, never sees the relay's close, and close() sits out
    # its whole close_timeout (10 s; python-websockets/websockets#1555).
    await asyncio.gather(_drain(node), node.close())


async def _drain(node: RelayNode) -> None:
    assert node.ws is not None
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in node.ws:
            pass


async def _churn_auths(url: str, times: int) -> None:
    keys = NodeKeys.generate()
    for _ in range(times):
        node = RelayNode(Role.MACHINE, keys=keys)
        with contextlib.suppress(websockets.ConnectionClosed, AssertionError):
            await node.connect(url)  # refused with 4009 past the budget: keep churning
        await node.close()


async def main(url: str, flooders: int, requests_each: int, auths: int) -> None:
    nodes = [RelayNode(Role.MACHINE if i % 2 else Role.CONTROLLER) for i in range(flooders)]
    await asyncio.gather(*(node.connect(url) for node in nodes))
    print("connected", flush=True)
    await asyncio.gather(
        *(_flood_requests(node, requests_each) for node in nodes), _churn_auths(url, auths)
    )
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
