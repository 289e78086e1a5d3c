"""Web Push through every real part: a real agent raises a checkpoint; the daemon seals
a notification to the device's key and sends it through the real relay, which wraps
it in RFC 8291 + VAPID and POSTs it to a local RFC 8030 push service; the test opens
both layers with the subscription's keys and the device's keys."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from starmux.client.agent_client import relay_link_released
from starmux.client.sessions import live_controller
from starmux.client.store import KEY_FILE as CONTROLLER_KEY_FILE
from starmux.daemon.store import KEY_FILE as MACHINE_KEY_FILE
from starmux.home import load_node_keys
from starmux.messages import APP, CheckpointRaised, LoggedEvent
from starmux.notify_messages import Viewing
from starmux.notify_push import SEALED_SIZE, open_notification
from starmux.notify_rules import NotifyKind

from ..timeouts import poll, scaled
from . import checkpoint_agent
from .cluster import Paired, pair, pending_checkpoint, python
from .daemon_process import DaemonProcess
from .push_service import PushService, subscribe_device
from .relay_process import RelayProcess

TITLE = "Push the-secret-title?"


def agent(stamp: Path, title: str = TITLE, *extra: str) -> list[str]:
    return checkpoint_agent.agent(stamp, title, "the-secret-body", *extra)


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


@pytest.fixture
def service() -> Iterator[PushService]:
    server = PushService()
    yield server
    server.close()


def _open(paired: Paired, sealed: bytes) -> object:
    device = load_node_keys(paired.controller / CONTROLLER_KEY_FILE)
    machine = load_node_keys(paired.daemon.home / MACHINE_KEY_FILE).sign_public
    return open_notification(device, sealed, machine_known=lambda key: key == machine)


def _metric(relay: RelayProcess, outcome: str) -> float:
    text = urllib.request.urlopen(relay.http_url + "/metrics", timeout=10).read().decode()
    line = f'starmux_relay_pushes_total{{outcome="{outcome}"}} '
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


def test_checkpoint_pushes_once_within_two_seconds_sealed_twice(
    paired: Paired, service: PushService, tmp_path: Path
) -> None:
    sub = service.subscribe()
    vapid = subscribe_device(paired.controller, sub)
    served = json.loads(
        urllib.request.urlopen(paired.relay.http_url + "/v1/push/vapid-public-key").read()
    )
    assert len(vapid) == 65 and served["vapid_public_key"]
    stamp = tmp_path / "raised"
    session = paired.run(*agent(stamp, TITLE, "--timeout", "120"), title="nightly deploy")
    post = service.wait_for(1, within=10.0)[0]
    latency = post.at - float(stamp.read_text())
    raised = checkpoint_agent.raised_at(paired)
    print(
        f"checkpoint -> push: {latency * 1000:.0f} ms from the agent's call, "
        f"{(post.at - raised) * 1000:.0f} ms from the daemon's checkpoint-raised; "
        f"POST body {len(post.body)} B"
    )
    assert latency < scaled(2.0)
    # Outer layer: what the push service sees is aes128gcm of the fixed-size seal.
    sealed = service.plaintexts[0][2]
    assert len(sealed) == SEALED_SIZE and TITLE.encode() not in post.body + sealed
    # Inner layer: only the device opens it, and it says who, what and where.
    note = _open(paired, sealed)
    assert note.notify_kind is NotifyKind.CHECKPOINT and note.title == TITLE  # type: ignore[attr-defined]
    assert note.session == session and note.machine_name == "gpu-box"  # type: ignore[attr-defined]
    assert note.session_title == "nightly deploy"  # type: ignore[attr-defined]
    time.sleep(scaled(0.5))
    assert len(service.received) == 1  # exactly one push for the one subscribed device
    assert _metric(paired.relay, "sent") == 1.0


def test_no_push_after_a_decision_and_410_removes_the_subscription(
    paired: Paired, service: PushService, tmp_path: Path
) -> None:
    sub = service.subscribe()
    subscribe_device(paired.controller, sub)
    paired.cli("notify", "settings", "--reminder", "0.5")
    paired.run(*agent(tmp_path / "one", TITLE, "--timeout", "4s"))
    service.wait_for(1, within=10.0)
    checkpoint = pending_checkpoint(paired.cli, TITLE)
    paired.cli("approve", str(checkpoint["id"]))
    # The session's end is pushed; no reminder (due at 2 s) ever is: watched until 1 s
    # past when it was due, 2 s before the expiry (the daemon's clock, this machine's).
    service.wait_for(2, within=10.0)
    expires_at = checkpoint["expires_at"]
    assert isinstance(expires_at, float), checkpoint
    time.sleep(max(0.0, expires_at - 2.0 + scaled(1.0) - time.time()))
    kinds = [_open(paired, p[2]).notify_kind for p in service.plaintexts]  # type: ignore[attr-defined]
    assert kinds == [NotifyKind.CHECKPOINT, NotifyKind.SUCCEEDED], kinds

    # The browser unsubscribed: the push service answers 410 and the relay forgets it.
    service.gone.add(sub.endpoint.removeprefix(service.base))
    paired.run(*agent(tmp_path / "two", "Another?", "--timeout", "120"))
    poll(lambda: _metric(paired.relay, "gone") == 1.0 or None, within=10.0, what="410 seen")
    rows = sqlite3.connect(paired.relay.data_dir / "registry.sqlite3").execute(
        "SELECT count(*) FROM push_subscriptions"
    )
    assert rows.fetchone()[0] == 0
    # The next one finds no subscription, and notify list says so.
    pending = pending_checkpoint(paired.cli, "Another?")
    paired.cli("deny", str(pending["id"]))
    failing = poll(
        lambda: next(
            (
                m
                for t in json.loads(paired.cli("notify", "list", "--json"))
                for m in t["machines"]
                if m.get("state") == "failing"
            ),
            None,
        ),
        within=10.0,
        what="the push target failing",
    )
    assert "no push subscription" in failing["detail"]


def waiting_agent(gate: Path, title: str) -> list[str]:
    """A session that raises its checkpoint only once ``gate`` exists."""
    args = ["checkpoint", title, "--timeout", "120"]
    return python(
        "import os, subprocess, sys, time\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.02)\n"
        f"sys.exit(subprocess.run([sys.executable, '-m', 'starmux.cli', *{args!r}]).returncode)\n"
    )


def test_a_device_looking_at_the_session_is_not_pushed(
    paired: Paired, service: PushService, tmp_path: Path
) -> None:
    subscribe_device(paired.controller, service.subscribe())
    gate = tmp_path / "gate"
    looked_at = paired.run(*waiting_agent(gate, "Looked at?"))
    other = paired.run(*agent(tmp_path / "stamp", "Elsewhere?", "--timeout", "120"))
    service.wait_for(1, within=10.0)  # the other session's push: the path works

    async def look_then_raise() -> None:
        raised = asyncio.Event()

        def on_event(machine: bytes, event: LoggedEvent) -> None:
            message = APP.decode(event.body)
            if isinstance(message, CheckpointRaised) and message.title == "Looked at?":
                raised.set()

        async with live_controller(paired.controller, on_event=on_event) as (_, controller):
            assert controller is not None
            await controller.wait_live()
            machine = next(iter(controller.machines.values()))
            # What the web app sends while it shows the session in the foreground
            # (the CLI has no foreground): private here, as the web app has its own.
            await controller._send(machine, Viewing(looked_at, time.time() + 60))
            gate.touch()
            async with asyncio.timeout(scaled(10.0)):
                await raised.wait()

    with relay_link_released(paired.controller):
        asyncio.run(look_then_raise())
    time.sleep(scaled(1.0))  # a push comes ~0.3 s after its checkpoint
    titles = [_open(paired, p[2]).title for p in service.plaintexts]  # type: ignore[attr-defined]
    assert titles == ["Elsewhere?"], titles
    assert other != looked_at
