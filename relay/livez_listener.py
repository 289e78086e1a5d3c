"""``/livez`` on a listener of its own, answered by a thread (``livez_port``).

Why a thread: on a node whose event loop is backlogged and starved of CPU (a
reconnect storm on two cores), a request on the main listener waits behind every
ready callback, and each turn of the loop then takes seconds of wall time. HAProxy
gives a check one second, so with ``fall 2`` it took the last node out (measured:
1.8–2.7 s per /livez on a slow machine). A thread blocked in ``accept`` waits for
nothing but the GIL, which the loop hands over every switch interval (5 ms), so it
answers within a few of the node's run slices.

What the thread cannot see for itself is whether the loop still turns, which is what
"live" promised on the main listener: the loop stamps a :class:`LoopHeartbeat`
every ``HEARTBEAT`` seconds, and a stamp older than ``STALL`` makes ``/livez`` 503,
so a wedged loop (a deadlock, a blocking call) still takes the node out.

The listener is for the balancer, on a private address (``livez_host``, loopback
by default): it reads at most one small request per connection, under a deadline,
and serves a bounded number of connections at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from starmux.url_host import url_host

log = logging.getLogger("starmux.relay")

HEARTBEAT = 0.5
#: A loop that has not turned for this long is not starved but stuck.
STALL = 10.0
#: Seconds a client has to send its request (a slow one would hold a thread).
REQUEST_TIMEOUT = 2.0
#: Connections served at once; more are closed unanswered.
MAX_CONNECTIONS = 16

#: () -> (live, what /livez may say publicly): the same check as the main listener's.
Check = Callable[[], tuple[bool, str]]


class LoopHeartbeat:
    """When the event loop last ran a callback, for a thread to read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stamped = clock()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def beat() -> None:
            self._stamped = self._clock()
            self._timer = loop.call_later(HEARTBEAT, beat)

        beat()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def age(self) -> float:
        return self._clock() - self._stamped


def livez_answer(check: Check, heartbeat: LoopHeartbeat) -> tuple[int, bytes]:
    """(status, JSON body): the loop's liveness first, then the node's own check."""
    stalled = heartbeat.age()
    if stalled > STALL:
        live, public = False, f"this node's event loop has not run for {stalled:.0f} s"
    else:
        live, public = check()
    body = json.dumps({"ok": live, "detail": public}).encode()
    return (200 if live else 503), body


class _LivezHandler(BaseHTTPRequestHandler):
    server: _LivezServer
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.0"  # one request per connection: nothing held open

    def do_GET(self) -> None:  # the name http.server dispatches to
        if self.path.split("?", 1)[0] != "/livez":
            self._reply(404, b'{"ok": false, "detail": "not found"}')
            return
        self._reply(*livez_answer(self.server.check, self.server.heartbeat))

    def do_HEAD(self) -> None:
        self.do_GET()

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def version_string(self) -> str:
        # Not http.server's "BaseHTTP/x Python/y": nothing a scanner can use.
        return "starmux-relay"

    def log_message(self, format: str, *args: object) -> None:
        # Checks arrive every second from each balancer: no access log. Errors such
        # as a timed-out request are the client's, and not worth a line either.
        return


class _LivezServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], check: Check, heartbeat: LoopHeartbeat) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.check = check
        self.heartbeat = heartbeat
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _LivezHandler)

    def server_bind(self) -> None:
        # HTTPServer's own looks up the host's FQDN (a DNS query at start) for a
        # name this server never uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = (
            str(self.server_address[0]),
            int(self.server_address[1]),
        )

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("livez listener: a request from %s failed", client_address, exc_info=True)


class LivezListener:
    """The listener and its thread: constructing it binds (port 0 picks one), or
    raises OSError; :meth:`start` serves."""

    def __init__(self, host: str, port: int, check: Check) -> None:
        self.heartbeat = LoopHeartbeat()
        self._server = _LivezServer((host, port), check, self.heartbeat)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="starmux-livez", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        return f"http://{url_host(host)}:{port}/livez"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.heartbeat.start(loop)
        self._thread.start()

    async def close(self) -> None:
        self.heartbeat.stop()
        # shutdown() waits for serve_forever's next poll (up to half a second).
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
