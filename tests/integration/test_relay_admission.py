"""Raw sockets before the upgrade: a per-IP cap at accept, a deadline, a rate, and
the file-descriptor limit (issue 11, item 2: slowloris on the HTTP upgrade)."""

from __future__ import annotations

import asyncio
import resource
import time
import urllib.request

import pytest

from starmux.identity import Role

from .conftest import RelayFactory
from .node import RelayNode

#: The start of an upgrade request, never finished: what a slowloris client sends.
HALF_UPGRADE = b"GET /v1/ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"


async def _half_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HALF_UPGRADE)
    await writer.drain()
    return reader, writer


async def _ended(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the relay sent before it closed the socket (b"" for a bare close)."""
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def _metric(relay_http: str, name: str) -> float:
    with urllib.request.urlopen(relay_http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def test_half_sent_upgrades_are_capped_and_dropped_at_the_deadline(
    relay_factory: RelayFactory,
) -> None:
    cap, deadline = 20, 2.0
    relay = relay_factory(
        env={
            "STARMUX_RELAY_CONNECTIONS_PER_IP": str(cap),
            "STARMUX_RELAY_UPGRADE_TIMEOUT": str(deadline),
        }
    )
    opened = time.monotonic()
    sockets = [await _half_open(relay.port) for _ in range(cap + 10)]
    # The ten over the cap are answered at once, unparsed, well before any deadline.
    refused = await asyncio.gather(*(_ended(reader, deadline / 2) for reader, _ in sockets[cap:]))
    assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in refused), refused
    # Meanwhile someone on another address connects and authenticates as usual.
    other = RelayNode(Role.MACHINE)
    await other.connect(relay.url, local_host="127.0.0.2")
    # The held ones are dropped by the deadline: nothing was ever answered to them.
    held = await asyncio.gather(*(_ended(reader, deadline + 10) for reader, _ in sockets[:cap]))
    assert held == [b""] * cap
    assert time.monotonic() - opened >= deadline * 0.9
    # Their slots are free again: the address that held them can connect.
    again = RelayNode(Role.MACHINE)
    await again.connect(relay.url)
    for _, writer in sockets:
        writer.close()
    await other.close()
    await again.close()
    assert _metric(relay.http_url, 'starmux_relay_refused_total{limit="upgrade-timeout"}') == cap
    assert _metric(relay.http_url, 'starmux_relay_refused_total{limit="sockets-per-ip"}') == 10


async def test_new_connections_per_ip_are_rate_limited(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        env={
            # A token back every 100 s: none comes back during the test, however slow.
            "STARMUX_RELAY_CONNECTION_RATE_PER_IP": "0.01",
            "STARMUX_RELAY_CONNECTION_BURST_PER_IP": "5",
        }
    )
    answers = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        answers.append(await _ended(reader, 10))
        writer.close()
    assert [a.split(b" ", 2)[1] for a in answers] == [b"404"] * 5 + [b"429"] * 3
    # Another address has its own budget.
    other = RelayNode(Role.MACHINE)
    await other.connect(relay.url, local_host="127.0.0.2")
    await other.close()


def test_the_file_descriptor_limit_is_raised_at_start(relay_factory: RelayFactory) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.fail(f"this test needs a hard file limit above 256, not {hard}")

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    relay = relay_factory(preexec=lower_soft_limit)
    assert relay.process is not None
    relay_soft, relay_hard = resource.prlimit(relay.process.pid, resource.RLIMIT_NOFILE)
    assert relay_hard == hard
    assert relay_soft == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
