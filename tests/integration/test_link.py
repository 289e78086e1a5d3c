"""RelayLink against a real relay: the socket options a long-lived node connection needs."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterable
from typing import Any

import pytest

from starmux.identity import NodeKeys, Role
from starmux.node.link import UNACKNOWLEDGED_DATA_TIMEOUT, Data, RelayLink, Undeliverable

from .relay_process import RelayProcess


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_USER_TIMEOUT is Linux-only")
async def test_a_link_bounds_how_long_sent_data_may_stay_unacknowledged(
    relay: RelayProcess,
) -> None:
    # Without this bound a daemon streaming output over a connection that died silently
    # keeps it for ~15 minutes (tests/fault proves the whole story across namespaces).
    keys = NodeKeys.generate()
    link = RelayLink(relay.url, keys, keys.card(Role.MACHINE, "gpu-box"), pinned_relay_key=None)
    await link.connect()
    try:
        assert link._ws is not None
        sock = link._ws.transport.get_extra_info("socket")
        timeout_ms = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        assert timeout_ms == int(UNACKNOWLEDGED_DATA_TIMEOUT * 1000)
    finally:
        await link.close()


class _CountingTransport:
    """The link's transport, counting the writes handed to it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self._transport.write(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self.writes += 1
        self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_many_data_frames_go_out_in_one_write_and_arrive_each_whole_in_order(
    relay: RelayProcess,
) -> None:
    # A controller paging a hundred machines asks many of them for their next page
    # in one turn: one write for all, yet the relay must take each as its own frame
    # with its own address. Here half go to the link itself (an echo, which any key
    # may send) and half to a key that is not connected (refused, one by one).
    keys, absent = NodeKeys.generate(), NodeKeys.generate().sign_public
    link = RelayLink(relay.url, keys, keys.card(Role.MACHINE, "box"), pinned_relay_key=None)
    await link.connect()
    try:
        assert link._ws is not None
        counting = _CountingTransport(link._ws.transport)
        link._ws.transport = counting  # type: ignore[assignment]
        frames = [(keys.sign_public if n % 2 else absent, b"%d;" % n * n) for n in range(1, 41)]
        await link.send_data_many(frames)
        assert counting.writes == 1
        echoed: list[bytes] = []
        refused: list[bytes] = []
        while len(echoed) + len(refused) < len(frames):
            event = await asyncio.wait_for(link.next_event(), 10)
            if isinstance(event, Data):
                echoed.append(event.body)
            elif isinstance(event, Undeliverable):
                refused.append(event.peer)
        assert echoed == [body for peer, body in frames if peer == keys.sign_public]
        assert refused == [absent] * 20
    finally:
        await link.close()
