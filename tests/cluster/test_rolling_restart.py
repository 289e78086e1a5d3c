"""A rolling restart of every node (one at a time, graceful) while many idle machines
and chatty sessions are connected through HAProxy: nothing lost, every machine back.

The idle machines are relay-level clients (real keys, real relay auth, unpaired) in
one background event loop, reconnecting through the balancer after a close the way
a daemon does (after a jittered pause). ``STARMUX_CLUSTER_IDLE`` sets how many:
300 by default, to keep the suite within the CI budget on a 2-core machine; the
issue's 1,000 passes too (``STARMUX_CLUSTER_IDLE=1000``: about 60 s here).

The chatty sessions print 10,000 lines in chunks of 500 with a pause between
chunks until the test says every node has restarted, then the rest up to their
last chunk at once; they print that and end when the test releases them (a
:class:`Gate`). So their output spans the whole rolling restart however long it
takes, and they end as soon as it is over, not after a fixed time sized for a
slow machine.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

import websockets

from starmux.frames import parse_frame
from starmux.identity import NodeKeys, Role
from starmux.relay_auth import NodeAuth
from tests.integration.cluster import python
from tests.integration.daemon_process import DaemonProcess, run_cli
from tests.integration.watcher import Watcher
from tests.timeouts import EVENT, scaled

from .conftest import RelayCluster
from .test_across_nodes import pair_across

IDLE = int(os.environ.get("STARMUX_CLUSTER_IDLE", "300"))
LINES = 10_000
CHUNK = 500

#: A chatty session: 1..LINES; after every CHUNK lines a pause of up to 0.4 s until
#: the gate (a socket to the test, ``{port}``) says to hurry (a byte); before the
#: last chunk, a wait for the gate's release (its end of file).
CHATTY = (
    "import select, socket\n"
    "gate = socket.create_connection(('127.0.0.1', {port}))\n"
    "hurry = False\n"
    f"for i in range(1, {LINES + 1}):\n"
    "    print(i, flush=True)\n"
    f"    if i == {LINES - CHUNK}:\n"
    "        while gate.recv(64):\n"
    "            pass\n"
    f"    elif i % {CHUNK} == 0 and i < {LINES} and not hurry:\n"
    "        hurry = bool(select.select([gate], [], [], 0.4)[0])\n"
)


class Gate:
    """What the chatty sessions wait on: each connects to :attr:`port` when it
    starts. Closing the gate releases them all (a failing test must not leave them
    waiting)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(EVENT)
        self.port: int = self._server.getsockname()[1]
        self._sessions: list[socket.socket] = []

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
        self._server.close()

    def hurry(self, sessions: int) -> None:
        """``sessions`` sessions (connected or connecting) stop pausing."""
        for _ in range(sessions):
            connection, _ = self._server.accept()
            self._sessions.append(connection)
            connection.sendall(b"!")

    def release(self) -> None:
        """The sessions print their last chunk and end."""
        for connection in self._sessions:
            connection.close()
        self._sessions.clear()


class IdleFleet:
    """``count`` idle machines that stay connected through ``url`` whatever happens."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url + "/v1/ws"
        self.keys = [NodeKeys.generate() for _ in range(count)]
        self.connected = 0
        self.connections = 0  # successful authentications, reconnections included
        self._changed = threading.Condition()  # either counter moved
        self._stop = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))

    def start(self) -> IdleFleet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def wait_connected(self, *, at_least_connections: int = 0, timeout: float = 60.0) -> None:
        """Until every machine is connected and ``at_least_connections`` were made in
        all (``timeout`` in unscaled seconds)."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: (
                    self.connected >= len(self.keys) and self.connections >= at_least_connections
                ),
                scaled(timeout),
            )
            assert done, (
                f"{self.connected} of {len(self.keys)} idle machines connected"
                f" ({self.connections} connections so far)"
            )

    def _count(self, connected: int, connections: int = 0) -> None:
        with self._changed:
            self.connected += connected
            self.connections += connections
            self._changed.notify_all()

    async def _run(self) -> None:
        gate = asyncio.Semaphore(64)  # connect in waves, as a real fleet's jitter does
        tasks = [asyncio.create_task(self._machine(keys, gate)) for keys in self.keys]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.2)  # let the aborted connections' own tasks finish

    async def _machine(self, keys: NodeKeys, gate: asyncio.Semaphore) -> None:
        card = keys.card(Role.MACHINE, "idle")
        while True:
            try:
                async with gate:
                    ws = await websockets.connect(self.url, compression=None, open_timeout=10)
                    auth = NodeAuth(keys, card, pinned_relay_key=None)
                    await ws.send(auth.receive_challenge(parse_frame(await ws.recv(decode=False))))
                    auth.receive_welcome(parse_frame(await ws.recv(decode=False)))
                self._count(+1, +1)
                try:
                    async for _ in ws:
                        pass  # notices; the relay closes after a RESTARTING one
                finally:
                    self._count(-1)
                    ws.transport.abort()  # at once, also when the fleet stops
            except (OSError, TimeoutError, websockets.WebSocketException):
                pass
            await asyncio.sleep(random.uniform(0.05, 1.0))


def test_rolling_restart_loses_nothing(
    tmp_path: Path, cluster: RelayCluster, daemons: list[DaemonProcess]
) -> None:
    assert cluster.proxy is not None
    paired = pair_across(tmp_path, cluster, daemons)
    started = time.perf_counter()
    fleet = IdleFleet(cluster.url, IDLE).start()
    try:
        fleet.wait_connected()
        print(f"\n{IDLE} idle machines connected in {time.perf_counter() - started:.1f} s")
        with Gate() as gate:
            chatty = python(CHATTY.format(port=gate.port))
            sessions = [paired.run(*chatty, title=f"chatty-{n}") for n in range(3)]
            # One live watch (one controller identity holds one connection at a time);
            # every session's full log is checked after.
            watcher = Watcher(paired.controller, sessions[0])
            watcher.wait_lines(1)

            for index in range(len(cluster.nodes)):
                port = cluster.nodes[index].port
                cluster.nodes[index].stop(signal.SIGTERM)  # graceful: RESTARTING notices first
                cluster.start_node(index, port=port)
                cluster.proxy.wait_up([index])
            restarted = time.perf_counter()
            # The gate held: the sessions are still running (the watched one has not
            # printed its last chunk), so each one ends after both restarts.
            assert len(watcher.lines) <= LINES - CHUNK
            gate.hurry(len(sessions))
            # Released at once: the sessions end while the watch may still be catching
            # up after the restarts. (Its tail was lost so, once in 15-20 runs, until
            # stream_session read the row before the events: tests/unit/
            # test_watch_stream.py.)
            gate.release()
            fleet.wait_connected(at_least_connections=2 * IDLE)
            print(f"every idle machine back {time.perf_counter() - restarted:.1f} s after the"
                  f" last node restarted ({fleet.connections} connections in all)")  # fmt: skip

            assert watcher.finish() == 0, b"".join(watcher.errors).decode(errors="replace")
            assert watcher.lines == [f"{i}\n".encode() for i in range(1, LINES + 1)]
        for session in sessions:
            logs = run_cli(paired.controller, "logs", session)
            assert logs.stdout.splitlines() == [str(i) for i in range(1, LINES + 1)], session
        unpaired = sum(
            cluster.metric(i, 'starmux_relay_connections{role="unpaired"}') for i in range(2)
        )
        assert unpaired == IDLE
    finally:
        fleet.stop()
