"""Web Push on the relay: subscriptions, the VAPID key, and forwarding opaque bytes.

A device registers its browser's push subscription (``register-push``, signed by the
device key); a machine of the same account sends ``send-push`` with bytes it sealed
to that device (:mod:`starmux.notify_push`: fixed size, unreadable here); the relay
wraps them in RFC 8291 ``aes128gcm`` to the subscription's keys, signs a VAPID
(RFC 8292) header with its own key, and POSTs them to the endpoint (pywebpush).

Invariants:

- The relay learns: device D got a push of :data:`~starmux.notify_push.SEALED_SIZE`
  bytes at time T from machine M of the same account. Never what it says.
- ``send-push`` answers at once (``push-queued``); the POST runs in its own task, so
  a slow push service never holds the machine's connection.
- A subscription the push service calls gone (404, 410) is deleted at once.
- Per device, pushes are rate limited (a token bucket); refusals and outcomes are
  counted in ``/metrics`` (``starmux_relay_pushes{outcome}``).
- The VAPID private key is made at first start and kept 0600 next to the relay key
  (the shared ``--key-file`` of a cluster: every node signs with the same one).
- Subscriptions are in the registry (SQLite, or PostgreSQL for a cluster), so any
  node pushes to a device that registered through another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid

from starmux.codec import Message
from starmux.control import FailureCode, SessionStatus
from starmux.errors import CryptoError
from starmux.home import write_private_file
from starmux.identity import verify_signature
from starmux.notify_messages import PushOutcome, PushQueued, PushRegistered, RegisterPush, SendPush
from starmux.notify_push import SEALED_SIZE, subscription_transcript

from .peer import Peer
from .ratelimit import KeyedBuckets
from .registry import PushSubscription, RegistryError
from .state import RelayState

log = logging.getLogger("starmux.relay")

VAPID_KEY_FILE = "vapid.pem"
MAX_ENDPOINT = 1024
#: a push waits this long at the push service for an offline browser
PUSH_TTL = 3600
POST_TIMEOUT = 10.0
#: a registration's signature is fresh for this long either side of the relay's clock
REGISTRATION_WINDOW = 600.0
#: per device: 10 at once, then one every 3 s
PUSH_BURST = 10
PUSH_RATE = 1 / 3
#: who runs this relay, for push services (RFC 8292 ``sub``)
VAPID_SUBJECT = "mailto:starmux-relay@localhost"


def load_or_create_vapid(path: Path) -> Vapid:
    """The VAPID key at ``path``, made 0600 if missing. Cluster nodes share one file
    (next to the shared ``--key-file``): a subscription is bound to the key that
    made it, so every node must sign with the same. Several nodes may start at once
    on a missing file: the new key is linked into place, and a node that loses that
    race loads the winner's (as :func:`relay.app.load_or_create_shared_key` does)."""
    if path.exists():
        return Vapid.from_file(str(path))
    vapid = Vapid()
    vapid.generate_keys()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_private_file(tmp, vapid.private_pem())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return Vapid.from_file(str(path))
    finally:
        tmp.unlink()
    return vapid


class WebPush:
    """One per relay process (``state.push``); subscriptions live in the registry."""

    def __init__(self, vapid_file: Path) -> None:
        self.vapid = load_or_create_vapid(vapid_file)
        self.public_key: bytes = self.vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self._http: aiohttp.ClientSession | None = None
        self.by_device = KeyedBuckets(PUSH_RATE, PUSH_BURST)
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.close()

    def forward(self, state: RelayState, sub: PushSubscription, data: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._post(state, sub, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, state: RelayState, sub: PushSubscription, data: bytes) -> None:
        # Imported here: pywebpush brings requests along, which only pushes need.
        from pywebpush import WebPushException, webpush_async

        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            await webpush_async(
                {
                    "endpoint": sub.endpoint,
                    "keys": {"p256dh": _b64(sub.p256dh), "auth": _b64(sub.auth)},
                },
                data,  # bytes are accepted (encoded as is)
                vapid_private_key=self.vapid,
                vapid_claims={"sub": VAPID_SUBJECT},
                ttl=PUSH_TTL,
                timeout=POST_TIMEOUT,
                headers={"Urgency": "high"},
                aiohttp_session=self._http,
            )
        except WebPushException as exc:
            status = exc.status_code
            if status in (404, 410):
                await state.registry.forget_push_subscription(sub.device, endpoint=sub.endpoint)
                state.metrics.pushes["gone"] += 1
                return
            state.metrics.pushes["failed"] += 1
            log.warning("a push was refused by its push service: HTTP %s", status)
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            state.metrics.pushes["failed"] += 1
            log.warning("a push service was unreachable (%s)", type(exc).__name__)
            return
        state.metrics.pushes["sent"] += 1


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _push(state: RelayState) -> WebPush:
    push = state.push
    if not isinstance(push, WebPush):
        raise RegistryError(FailureCode.FORBIDDEN, "this relay does not forward Web Push")
    return push


def _check_endpoint(endpoint: str) -> None:
    parts = urllib.parse.urlsplit(endpoint)
    if (
        len(endpoint) > MAX_ENDPOINT
        or parts.scheme not in ("https", "http")
        or not parts.hostname
        or not endpoint.isprintable()
    ):
        raise RegistryError(
            FailureCode.FORBIDDEN, "not a push endpoint", hint="the browser's subscription.endpoint"
        )


async def register_push(state: RelayState, peer: Peer, req: RegisterPush) -> Message:
    if peer.status is not SessionStatus.CONTROLLER:
        raise RegistryError(FailureCode.FORBIDDEN, "this connection may not make that request")
    push = _push(state)
    if req.endpoint:
        _check_endpoint(req.endpoint)
        if len(req.p256dh) != 65 or req.p256dh[0] != 4 or len(req.auth) != 16:
            raise RegistryError(
                FailureCode.FORBIDDEN, "a subscription has a 65-byte p256dh and 16-byte auth"
            )
    now = state.clock()
    if abs(now - req.issued_at) > REGISTRATION_WINDOW:
        raise RegistryError(
            FailureCode.FORBIDDEN, "the registration is stale", hint="check the clock"
        )
    transcript = subscription_transcript(
        state.keys.sign_public, peer.key, req.endpoint, req.p256dh, req.auth, req.issued_at
    )
    try:
        verify_signature(peer.key, transcript, req.signature)
    except CryptoError:
        raise RegistryError(FailureCode.FORBIDDEN, "the registration's signature is bad") from None
    if req.endpoint:
        await state.registry.set_push_subscription(
            PushSubscription(peer.key, peer.account, req.endpoint, req.p256dh, req.auth, now)
        )
    else:
        await state.registry.forget_push_subscription(peer.key)
    return PushRegistered(req.request_id, push.public_key)


async def send_push(state: RelayState, peer: Peer, req: SendPush) -> Message:
    if peer.status is not SessionStatus.MACHINE:
        raise RegistryError(FailureCode.FORBIDDEN, "this connection may not make that request")
    push = _push(state)
    if len(req.payload) != SEALED_SIZE or len(req.device) != 32:
        raise RegistryError(FailureCode.FORBIDDEN, f"a push payload is {SEALED_SIZE} bytes")
    sub = await state.registry.push_subscription(req.device, peer.account)
    if sub is not None and await state.registry.is_removed_device(req.device):
        await state.registry.forget_push_subscription(req.device)
        sub = None  # removed from the account: its subscription goes with it
    if sub is None:
        state.metrics.pushes["no-subscription"] += 1
        return PushQueued(req.request_id, PushOutcome.NO_SUBSCRIPTION)
    if not push.by_device.take(req.device.hex(), time.monotonic()):
        state.metrics.pushes["rate-limited"] += 1
        return PushQueued(req.request_id, PushOutcome.RATE_LIMITED)
    push.forward(state, sub, req.payload)
    return PushQueued(req.request_id, PushOutcome.QUEUED)


def install(handlers: dict[type[Message], Any]) -> None:
    handlers[RegisterPush] = register_push
    handlers[SendPush] = send_push
