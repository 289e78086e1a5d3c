"""Local receivers for notifications: a webhook sink and an RFC 8030 push service.

Both are real HTTP servers on a free loopback port (threads in the test process):

- :class:`WebhookSink` records every POST (arrival time, headers, body) and answers
  with the statuses it is told (e.g. 500, 500, then 200 for ever).
- :class:`PushService` is the receive side of RFC 8030 for subscriptions it makes:
  :meth:`PushService.subscribe` generates the browser's P-256 key pair and auth
  secret (what ``pushManager.subscribe`` would), and every POST to the endpoint is
  checked (``Content-Encoding: aes128gcm``, a VAPID ``Authorization`` header, TTL)
  and decrypted with RFC 8291 (``http_ece``) using the subscription's private key.
  An endpoint marked gone answers 410, like a real service after unsubscribe.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..timeouts import poll


@dataclass(frozen=True)
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Server:
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                entry = Received(time.time(), self.path, dict(self.headers.items()), body)
                status = owner.answer(entry)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, entry: Received) -> int:
        with self.lock:
            self.received.append(entry)
        return 200

    def wait_for(self, count: int, *, within: float, path: str | None = None) -> list[Received]:
        def enough() -> list[Received] | None:
            with self.lock:
                got = [r for r in self.received if path is None or r.path == path]
            return got if len(got) >= count else None

        return poll(enough, within=within, what=f"{count} POSTs")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebhookSink(_Receiver):
    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        super().__init__()

    def answer(self, entry: Received) -> int:
        super().answer(entry)
        with self.lock:
            return self.statuses.pop(0) if self.statuses else 200


@dataclass
class Subscription:
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    p256dh: bytes  # uncompressed public point, 65 bytes
    auth: bytes  # 16 bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class PushService(_Receiver):
    def __init__(self) -> None:
        self.subscriptions: dict[str, Subscription] = {}
        self.gone: set[str] = set()
        self.plaintexts: list[tuple[float, str, bytes]] = []
        super().__init__()

    def subscribe(self) -> Subscription:
        private_key = ec.generate_private_key(ec.SECP256R1())
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        path = "/push/" + secrets.token_urlsafe(12)
        sub = Subscription(self.base + path, private_key, public, secrets.token_bytes(16))
        self.subscriptions[path] = sub
        return sub

    def answer(self, entry: Received) -> int:
        # Recorded together, once opened: a test that saw the POST (wait_for) reads
        # its plaintext at once. Recorded before it was opened, the plaintext could
        # still be missing (a browser test read plaintexts[0] and found none). A POST
        # that does not open is still recorded.
        plaintext: bytes | None = None
        try:
            status, plaintext = self._open(entry)
        finally:
            with self.lock:
                if plaintext is not None:
                    self.plaintexts.append((entry.at, entry.path, plaintext))
                self.received.append(entry)
        return status

    def _open(self, entry: Received) -> tuple[int, bytes | None]:
        """The status a push service answers ``entry`` with, and its plaintext."""
        headers = {k.lower(): v for k, v in entry.headers.items()}
        if entry.path in self.gone:
            return 410, None
        sub = self.subscriptions.get(entry.path)
        if sub is None:
            return 404, None
        if headers.get("content-encoding") != "aes128gcm" or "ttl" not in headers:
            return 400, None
        if not headers.get("authorization", "").startswith("vapid t="):
            return 401, None
        plaintext = http_ece.decrypt(
            entry.body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
        )
        return 201, plaintext


def subscribe_device(
    controller: Path, sub: Subscription, *, before_connect: Callable[[], None] = lambda: None
) -> bytes:
    """Do what the web controller does: register ``sub`` with the relay (signed by
    the device key) and a push target with every machine. Returns the relay's VAPID
    public key from its answer. ``before_connect`` runs just before the registering
    connection is made (a cluster test steers the balancer there)."""
    from starmux.client import agent_client
    from starmux.client.actions import connected
    from starmux.client.agent_client import relay_link_released
    from starmux.client.store import ControllerStore
    from starmux.notify_messages import PushRegistered, RegisterPush
    from starmux.notify_push import subscription_transcript

    async def register() -> bytes:
        async with ControllerStore(controller) as store:
            config = await store.config()
            keys = store.keys()
            before_connect()
            async with connected(store, config) as link:
                issued = time.time()
                signature = keys.sign(
                    subscription_transcript(
                        link.relay_key, keys.sign_public, sub.endpoint, sub.p256dh, sub.auth, issued
                    )
                )
                request = RegisterPush(0, sub.endpoint, sub.p256dh, sub.auth, issued, signature)
                reply = await link.request(request, PushRegistered)
                assert isinstance(reply, PushRegistered)
                return reply.vapid_public_key

    # The controller agent holds this device's relay connection: borrow it.
    with relay_link_released(controller):
        vapid = asyncio.run(register())
    reply = agent_client.call(controller, "notify-target", kind="push", content="full")
    machines = reply["machines"]
    assert all(m["accepted"] for m in machines), reply
    return vapid
