"""The relay's Web Push handlers against a real registry, a real VAPID key and a real
local push service (HTTP on loopback): who may register and send, the fixed payload
size, the per-device rate limit and its metrics."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from starmux.codec import Message
from starmux.notify_messages import PushOutcome, PushQueued, PushRegistered, RegisterPush, SendPush
from starmux.notify_push import SEALED_SIZE, subscription_transcript
from starmux.relay import endpoint  # installs every handler, the push ones too
from starmux.relay.web_push import PUSH_BURST, VAPID_KEY_FILE, WebPush

from ..integration.push_service import PushService, Subscription
from ..timeouts import poll_async
from .test_relay_requests import T0, Node, Relay, refused
from .test_relay_requests import relay as relay

assert callable(endpoint.websocket_endpoint)


@pytest.fixture
async def pushing(relay: Relay, tmp_path: Path) -> AsyncIterator[Relay]:
    push = WebPush(tmp_path / VAPID_KEY_FILE)
    relay.state.push = push
    try:
        yield relay
    finally:
        await push.close()


@pytest.fixture
def service() -> Iterator[PushService]:
    server = PushService()
    yield server
    server.close()


def registration(relay: Relay, node: Node, sub: Subscription, *, at: float = T0) -> RegisterPush:
    transcript = subscription_transcript(
        relay.state.keys.sign_public, node.peer.key, sub.endpoint, sub.p256dh, sub.auth, at
    )
    return RegisterPush(1, sub.endpoint, sub.p256dh, sub.auth, at, node.keys.sign(transcript))


def test_the_vapid_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = WebPush(tmp_path / VAPID_KEY_FILE)
    assert stat.S_IMODE(os.stat(tmp_path / VAPID_KEY_FILE).st_mode) == 0o600
    again = WebPush(tmp_path / VAPID_KEY_FILE)
    assert again.public_key == first.public_key and len(first.public_key) == 65
    assert [p.name for p in tmp_path.iterdir()] == [VAPID_KEY_FILE]  # no temporary left


async def test_only_a_signed_fresh_registration_by_the_device_counts(
    pushing: Relay, service: PushService
) -> None:
    controller, machine = await pushing.paired()
    sub = service.subscribe()
    good = registration(pushing, controller, sub)
    assert await refused(pushing, machine, good) == "forbidden"  # a machine registers nothing
    forged = registration(pushing, machine, sub)  # signed by another key
    assert await refused(pushing, controller, forged) == "forbidden"
    stale = registration(pushing, controller, sub, at=T0 - 3600)
    assert await refused(pushing, controller, stale) == "forbidden"
    bad_url = RegisterPush(1, "file:///x", sub.p256dh, sub.auth, T0, good.signature)
    assert await refused(pushing, controller, bad_url) == "forbidden"
    reply = await pushing.ask(controller, good)
    assert isinstance(reply, PushRegistered) and len(reply.vapid_public_key) == 65


async def test_pushes_are_fixed_size_rate_limited_per_device_and_counted(
    pushing: Relay, service: PushService
) -> None:
    controller, machine = await pushing.paired()
    await pushing.ask(controller, registration(pushing, controller, service.subscribe()))
    device = controller.peer.key
    wrong = SendPush(2, device, b"x" * (SEALED_SIZE - 1))
    assert await refused(pushing, machine, wrong) == "forbidden"
    assert await refused(pushing, controller, SendPush(2, device, b"x" * SEALED_SIZE)) == (
        "forbidden"  # a controller does not push
    )
    outcomes: list[Message] = [
        await pushing.ask(machine, SendPush(3, device, os.urandom(SEALED_SIZE)))
        for _ in range(PUSH_BURST + 2)
    ]
    assert outcomes.count(PushQueued(3, PushOutcome.QUEUED)) == PUSH_BURST
    assert outcomes[-1] == PushQueued(3, PushOutcome.RATE_LIMITED)
    # A machine of another account finds no subscription for this device.
    _, stranger = await pushing.paired()
    other = await pushing.ask(stranger, SendPush(4, device, os.urandom(SEALED_SIZE)))
    assert other == PushQueued(4, PushOutcome.NO_SUBSCRIPTION)
    metrics = pushing.state.metrics.pushes

    async def all_sent() -> bool | None:
        return metrics["sent"] == PUSH_BURST or None

    await poll_async(all_sent, within=10.0, what="the POSTs")
    assert metrics["rate-limited"] == 2 and metrics["no-subscription"] == 1
    assert len(service.plaintexts) == PUSH_BURST
    assert {len(p) for _, _, p in service.plaintexts} == {SEALED_SIZE}
