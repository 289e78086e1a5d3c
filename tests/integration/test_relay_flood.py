"""Floods of control requests and authentications from one address are refused
before they reach the registry, counted in /metrics, and do not slow anyone else's
connect + authenticate (issue 11, item 12)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import urllib.request

from starmux.identity import Role

from .conftest import RelayFactory
from .node import RelayNode


def _refused(relay_http: str) -> dict[str, float]:
    with urllib.request.urlopen(relay_http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    prefix = 'starmux_relay_refused_total{limit="'
    return {
        line[len(prefix) : line.index('"', len(prefix))]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


async def _connect_and_authenticate(url: str) -> float:
    started = time.perf_counter()
    node = RelayNode(Role.CONTROLLER)
    await node.connect(url, local_host="127.0.0.2")
    elapsed = time.perf_counter() - started
    await node.close()
    return elapsed


async def test_a_flood_is_refused_counted_and_does_not_slow_others(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory()
    baseline = [await _connect_and_authenticate(relay.url) for _ in range(10)]
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.flood_client",
        relay.url,
        "40",  # connections, each sending...
        "200",  # ...this many requests without waiting for answers
        "60",  # and one key authenticating this many times
        stdout=asyncio.subprocess.PIPE,
    )
    assert flood.stdout is not None
    assert await asyncio.wait_for(flood.stdout.readline(), 30) == b"connected\n"
    during: list[float] = []
    while flood.returncode is None and len(during) < 30:
        during.append(await _connect_and_authenticate(relay.url))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flood.wait(), 0.01)
    await asyncio.wait_for(flood.wait(), 60)
    assert flood.returncode == 0
    print(
        f"connect+auth from another address: median {statistics.median(baseline) * 1000:.1f} ms"
        f" quiet, {statistics.median(during) * 1000:.1f} ms over {len(during)} tries during"
        f" the flood (max {max(during) * 1000:.1f} ms)"
    )
    refused = _refused(relay.http_url)
    print(f"refused: {refused}")
    assert refused.get("request-rate", 0) > 0  # connections cut off (4010)
    assert refused.get("request-rate-ip", 0) > 0  # requests refused per address
    assert refused.get("auth-rate", 0) > 0
    assert refused.get("registration-rate", 0) > 0
    # A bound with room for a loaded, shared test machine, yet below what an
    # unthrottled flood costs (every authentication queued behind registry writes).
    assert statistics.median(during) < max(0.25, 5 * statistics.median(baseline))
