"""``/livez``, the load balancer's check: cheap (no round trip, no connection), and
it keeps the last surviving node in HAProxy's rotation while that node is starved
of CPU, where ``/health`` (a full authenticated round trip) timed out and ``fall
2`` took it out, leaving machines with 503s. HAProxy checks each node's liveness
listener (``--livez-port``, answered by a thread), as in deploy/: on a slow machine
even /livez on the main listener took 1.8–2.7 s behind the starved loop's backlog.

Starvation is made, not hoped for: the test stops and continues the node's
process (SIGSTOP/SIGCONT), letting it run a few milliseconds in every hundred,
like a node whose two cores are taken by a reconnect storm. Timings are printed
(``pytest -s``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import websockets

from starmux.frames import FrameType, encode_frame
from starmux.identity import Role
from tests.integration.node import RelayNode
from tests.integration.relay_process import RelayProcess
from tests.timeouts import scaled

from .conftest import RelayCluster
from .test_cluster_failures import wait_health

RUN_SECONDS = 0.005  # of every PERIOD: about 5 % of one core
PERIOD = 0.1


def get(node: RelayProcess, path: str) -> tuple[int, dict[str, object], float]:
    return get_url(node.http_url + path)


def get_url(url: str) -> tuple[int, dict[str, object], float]:
    start = time.perf_counter()
    try:
        # Long: a starved node's main listener answers in seconds (what is measured).
        with urllib.request.urlopen(url, timeout=scaled(30)) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body), time.perf_counter() - start


def seconds_or_dropped(url: str) -> str:
    try:
        return f"{get_url(url)[2] * 1000:.0f} ms"
    except OSError as exc:  # the relay closed it unanswered, or the wait ran out
        return f"dropped ({type(exc).__name__})"


def connections_accepted(cluster: RelayCluster, index: int) -> float:
    return cluster.metric(index, "starmux_relay_connections_accepted_total")


@contextmanager
def busy(url: str, clients: int = 40, in_flight: int = 20) -> Iterator[None]:
    """Keep ``url``'s event loop backlogged: clients echoing DATA frames through it.
    Returns once every client is connected (a storm of authentications is not what
    this measures: during one, even /livez waits behind the handshakes' crypto)."""
    loop = asyncio.new_event_loop()
    done = asyncio.Event()
    connected = threading.Semaphore(0)

    async def echo(node: RelayNode) -> None:
        await node.connect(url)
        connected.release()
        assert node.ws is not None
        frame = encode_frame(FrameType.DATA, node.key, b"x" * 256)
        for _ in range(in_flight):
            await node.ws.send(frame)
        while not done.is_set():
            await node.ws.recv()
            await node.ws.send(frame)

    async def run() -> None:
        nodes = [RelayNode(Role.CONTROLLER) for _ in range(clients)]
        tasks = [asyncio.create_task(echo(node)) for node in nodes]
        await done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.close() for node in nodes), return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        for _ in range(clients):
            assert connected.acquire(timeout=scaled(10))
        yield
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join()
        loop.close()


@contextmanager
def starved(pid: int) -> Iterator[None]:
    """Let ``pid`` run RUN_SECONDS of every PERIOD until the block ends."""
    stop = threading.Event()

    def duty_cycle() -> None:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            stop.wait(PERIOD - RUN_SECONDS)
            os.kill(pid, signal.SIGCONT)
            time.sleep(RUN_SECONDS)

    thread = threading.Thread(target=duty_cycle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        os.kill(pid, signal.SIGCONT)


async def connect_and_leave(url: str, *, within: float = 0.0) -> None:
    """Connect and leave; ``within``: keep trying on a refused upgrade for that long,
    as a machine's daemon does with its backoff (a starved node may answer 503 for
    a moment while its own registry ping is late)."""
    deadline = time.monotonic() + within
    while True:
        node = RelayNode(Role.MACHINE)
        try:
            await node.connect(url)
        except websockets.InvalidStatus:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        await node.close()
        return


def test_livez_answers_from_flags_and_follows_the_bus(cluster: RelayCluster) -> None:
    a, _ = cluster.nodes
    before = connections_accepted(cluster, 0)
    timings = []
    for _ in range(50):
        status, body, seconds = get(a, "/livez")
        assert (status, body) == (200, {"ok": True, "detail": "ok"})
        timings.append(seconds)
    # No WebSocket round trip behind it: not one connection accepted for 50 checks.
    assert connections_accepted(cluster, 0) == before
    status, _, health_seconds = get(a, "/health")
    assert status == 200
    assert connections_accepted(cluster, 0) == before + 1  # /health's own round trip
    print(f"\n/livez p50 {statistics.median(timings) * 1000:.2f} ms, max "
          f"{max(timings) * 1000:.2f} ms; /health {health_seconds * 1000:.1f} ms")  # fmt: skip

    # Cut off from Redis: 503 on both listeners, so the balancer sends new clients
    # elsewhere.
    cluster.redis.stop()
    asyncio.run(wait_health(a, 503))
    for url in (a.http_url + "/livez", a.livez_url):
        status, body, _ = get_url(url)
        assert (status, body) == (
            503,
            {"ok": False, "detail": "this node cannot reach the cluster bus"},
        ), url
    cluster.redis.start()
    asyncio.run(wait_health(a, 200))
    for url in (a.http_url + "/livez", a.livez_url):
        assert get_url(url)[:2] == (200, {"ok": True, "detail": "ok"}), url


def test_a_starved_last_node_stays_in_the_balancers_rotation(cluster: RelayCluster) -> None:
    assert cluster.proxy is not None
    proxy = cluster.proxy
    cluster.nodes[0].stop(signal.SIGKILL)  # node B is the last one standing
    deadline = time.monotonic() + scaled(15)
    while proxy.servers()["n0"][0] != "DOWN":
        assert time.monotonic() < deadline, proxy.servers()
        time.sleep(0.05)  # HAProxy's check state has no event to wait on
    survivor = cluster.nodes[1]
    assert survivor.process is not None
    seen: set[str] = set()
    with busy(survivor.url), starved(survivor.process.pid):
        # Ten of HAProxy's checks (every 300 ms, each given 1 s as in deploy/, two
        # failures in a row take a node out).
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            seen.add(proxy.servers()["n1"][0])
            time.sleep(0.05)  # sampling HAProxy's view: there is no event for it
        assert "DOWN" not in seen, seen
        # What the check takes there (printed): on the listener HAProxy checks (a
        # thread's), then on the main one, behind the loop's backlog (past
        # upgrade_timeout the main listener drops a plain HTTP request, so "dropped"
        # is an answer too). /health, a full round trip, took 4-11 s: not waited for.
        livez = get_url(survivor.livez_url)[2]
        loop_livez = seconds_or_dropped(survivor.http_url + "/livez")
        # A machine still gets through the balancer (slowly) while starved.
        asyncio.run(connect_and_leave(cluster.url, within=scaled(10)))
    print(f"\nstarved last node: /livez {livez * 1000:.0f} ms (main listener:"
          f" {loop_livez});"
          f" HAProxy's view of it over 3 s: {sorted(seen)}")  # fmt: skip
