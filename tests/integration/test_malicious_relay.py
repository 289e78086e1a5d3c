"""A malicious relay cannot impersonate a paired machine, nor add or remove machines.

The relay here is the real one behind :class:`MaliciousRelay`: it keeps the real
relay's key (the controller's pin holds), lists the victim's key with its own card,
lists machines the controller never paired, hides paired ones, and answers the
controller's Noise_KK handshake for the victim with its own keys.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from starmux.client.sessions import live_controller
from starmux.control import MachineList
from starmux.identity import NodeKeys
from starmux.messages import StartSession

from .cluster import Paired, pair
from .daemon_process import DaemonProcess, run_cli, run_json
from .malicious_relay import MaliciousRelay
from .relay_process import RelayProcess

T = TypeVar("T")
SECRET = "API_TOKEN=hunter2-do-not-leak"


@pytest.fixture
def proxy_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


@pytest.fixture
def malicious(paired: Paired, proxy_loop: asyncio.AbstractEventLoop) -> Iterator[MaliciousRelay]:
    """The controller, paired through the honest relay, now reaches it only through
    the malicious one (same relay key: the operator turned, or its key leaked)."""
    listed = run_json(paired.controller, "machines")
    victim = bytes.fromhex(next(m["key"] for m in listed if m["name"] == "gpu-box"))
    proxy = on(proxy_loop, MaliciousRelay(paired.relay.url, victim).start())
    with sqlite3.connect(paired.controller / "controller.sqlite3") as db:
        db.execute("UPDATE settings SET value = ? WHERE name = 'relay_url'", (proxy.url.encode(),))
    # The controller agent that `machines` started reads its settings once: the next
    # command starts a fresh one, which reaches the relay only through the proxy.
    assert run_cli(paired.controller, "controller", "stop").returncode == 0
    yield proxy
    on(proxy_loop, proxy.close())


def test_the_relay_cannot_take_a_paired_machines_place(
    paired: Paired, malicious: MaliciousRelay
) -> None:
    # The listing names the victim's key with the relay's own card; the real
    # machine's presence is hidden so that only the impostor seems to be there.
    malicious.forge = lambda real: MachineList(
        real.request_id, (malicious.impostor_info("gpu-box"),)
    )
    malicious.hide_victim_presence = True

    result = run_cli(
        paired.controller,
        "run",
        "--json",
        "--machine",
        "gpu-box",
        "--env",
        SECRET,
        "--cwd",
        str(paired.workdir),
        "--",
        "./deploy.sh",
    )

    assert malicious.handshakes_completed == 0
    assert malicious.stolen == []
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["queued"] is True and reply["ok"] is None  # waits for the real machine
    assert "the relay's card for gpu-box" in result.stderr
    assert "not the one pinned at pairing" in result.stderr


def test_a_handshake_for_a_paired_machine_needs_its_pinned_key(
    paired: Paired, malicious: MaliciousRelay
) -> None:
    # As above, but the relay lets the machine's presence through: the controller
    # then runs Noise_KK for it, with the card pinned at pairing, and only the real
    # machine could answer that.
    malicious.forge = lambda real: MachineList(
        real.request_id, (malicious.impostor_info("gpu-box"),)
    )

    async def attempt() -> tuple[list[str], object]:
        async with live_controller(paired.controller) as (_, controller):
            assert controller is not None
            assert await asyncio.to_thread(malicious.refused.wait, 20.0)
            command = StartSession("s-stolen01", ("./deploy.sh",), "/", "deploy", {}, False)
            ack = await controller.submit(malicious.victim, command, within=1.0)
            return controller.warnings, ack

    warnings, ack = asyncio.run(attempt())

    assert malicious.handshakes_refused >= 1
    assert malicious.handshakes_completed == 0 and malicious.stolen == []
    assert ack is None  # not delivered: it stays in the outbox for the real machine
    assert any("not the one pinned at pairing" in warning for warning in warnings)


def test_the_relay_neither_adds_nor_deletes_machines(
    paired: Paired, malicious: MaliciousRelay
) -> None:
    stranger = NodeKeys.generate()
    # The relay omits the paired machine and lists one this controller never paired.
    malicious.forge = lambda real: MachineList(
        real.request_id, (malicious.impostor_info("evil-box", stranger.sign_public),)
    )

    result = run_cli(paired.controller, "machines", "--json")

    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r.get("listed_by_relay"), r["online"]) for r in rows] == [
        ("gpu-box", False, False)
    ]
    assert "the relay lists a machine this controller never paired: evil-box" in result.stderr
    assert "(ignored)" in result.stderr
    text = run_cli(paired.controller, "machines")
    assert "gpu-box" in text.stdout and "not listed by the relay" in text.stdout
    assert "evil-box" not in text.stdout

    # Honest again: the machine was never forgotten, and nothing was added.
    malicious.forge = lambda real: real
    again = run_json(paired.controller, "machines")
    assert [(r["name"], r.get("listed_by_relay"), r["online"]) for r in again] == [
        ("gpu-box", True, True)
    ]
