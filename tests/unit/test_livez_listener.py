"""relay/livez_listener.py: ``/livez`` answered by a thread on its own listener, over
real sockets on loopback (the relay process itself: tests/integration/
test_relay_exposure.py; under starvation behind HAProxy: tests/cluster/test_livez.py)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager

from starmux.relay.livez_listener import (
    MAX_CONNECTIONS,
    STALL,
    LivezListener,
    LoopHeartbeat,
    livez_answer,
)
from tests.timeouts import poll_async


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(url: str, method: str = "GET", path: str = "/livez") -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


@asynccontextmanager
async def serving(check: tuple[bool, str] = (True, "ok")) -> AsyncIterator[LivezListener]:
    listener = LivezListener("127.0.0.1", 0, lambda: check)
    listener.start(asyncio.get_running_loop())
    try:
        yield listener
    finally:
        await listener.close()


async def test_it_answers_the_nodes_own_check() -> None:
    async with serving() as listener:
        assert listener.url.startswith("http://127.0.0.1:")
        status, body = await asyncio.to_thread(request, listener.url)
        assert (status, json.loads(body)) == (200, {"ok": True, "detail": "ok"})
        head = await asyncio.to_thread(request, listener.url, "HEAD")
        assert head == (200, b"")
        assert (await asyncio.to_thread(request, listener.url, "GET", "/health"))[0] == 404
        assert (await asyncio.to_thread(request, listener.url, "POST"))[0] == 501
    async with serving((False, "this node cannot reach the cluster bus")) as listener:
        status, body = await asyncio.to_thread(request, listener.url)
        assert status == 503
        assert json.loads(body) == {"ok": False, "detail": "this node cannot reach the cluster bus"}


def test_a_loop_that_stopped_turning_is_not_live_whatever_the_check_says() -> None:
    clock = Clock()
    heartbeat = LoopHeartbeat(clock)
    assert livez_answer(lambda: (True, "ok"), heartbeat)[0] == 200
    clock.now += STALL - 0.1  # starved: slow turns, still turning
    assert livez_answer(lambda: (True, "ok"), heartbeat)[0] == 200
    clock.now += 0.2
    status, body = livez_answer(lambda: (True, "ok"), heartbeat)
    assert status == 503
    assert json.loads(body) == {
        "ok": False,
        "detail": f"this node's event loop has not run for {STALL:.0f} s",
    }


async def test_the_running_loop_keeps_the_heartbeat_fresh() -> None:
    clock = Clock()
    heartbeat = LoopHeartbeat(clock)
    heartbeat.start(asyncio.get_running_loop())
    try:
        clock.now += 60.0
        assert heartbeat.age() == 60.0

        # The next beat (HEARTBEAT seconds of the loop's own time) stamps it again.
        async def fresh() -> bool | None:
            return True if heartbeat.age() == 0.0 else None

        await poll_async(fresh, within=5, what="a heartbeat")
    finally:
        heartbeat.stop()
    clock.now += 60.0
    assert heartbeat.age() == 60.0  # stopped: no more beats


@contextmanager
def idle_connections(url: str, count: int) -> Iterator[list[socket.socket]]:
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def test_a_flood_of_idle_connections_holds_a_bounded_number_of_threads() -> None:
    async with serving() as listener:
        with idle_connections(listener.url, MAX_CONNECTIONS) as held:
            # Every slot is held by a client that sends nothing: the next one is
            # closed unanswered rather than given another thread.
            async def refused() -> bool | None:
                try:
                    await asyncio.to_thread(request, listener.url)
                except ConnectionError:  # closed unanswered (reset, or before the reply)
                    return True
                return None  # a held connection's thread had not started yet

            await poll_async(refused, within=10, what="the connection over the cap refused")
            held.pop().close()

            # A slot freed by a client leaving is served again.
            async def served() -> bool | None:
                try:
                    status, _ = await asyncio.to_thread(request, listener.url)
                except ConnectionError:  # closed unanswered (reset, or before the reply)
                    return None
                return status == 200 or None

            await poll_async(served, within=10, what="a request served after a slot freed")


def test_a_taken_port_is_an_error_at_start() -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            LivezListener("127.0.0.1", taken.getsockname()[1], lambda: (True, "ok"))
        except OSError:
            return
        raise AssertionError("bound a port another socket listens on")
