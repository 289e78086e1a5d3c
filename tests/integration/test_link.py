"""RelayLink against a real relay: the socket options a long-lived node connection needs."""

from __future__ import annotations

import socket
import sys

import pytest

from starmux.identity import NodeKeys, Role
from starmux.node.link import UNACKNOWLEDGED_DATA_TIMEOUT, RelayLink

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
