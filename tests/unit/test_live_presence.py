"""The controller's reaction to presence, without a relay: a machine that comes back
online while its channel stood (it reconnected, replacing its old connection with no
"offline" in between) gets a fresh KK handshake; otherwise it would stay silent for
good, since a machine never starts KK itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nacl.utils

from starmux.client.live import LiveController, MachineChannel
from starmux.client.store import ControllerConfig, ControllerStore
from starmux.e2e import Kind, unwrap
from starmux.identity import NodeKeys, Role
from starmux.node.link import PresenceChanged


class RecordingLink:
    """Stands in for the relay link: records what the controller sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.writes: list[int] = []  # frames per write

    async def send_data(self, peer: bytes, body: bytes) -> None:
        self.sent.append((peer, body))
        self.writes.append(1)

    async def send_data_many(self, frames: Sequence[tuple[bytes, bytes]]) -> None:
        self.sent += frames
        self.writes.append(len(frames))


async def _controller(tmp_path: Path) -> tuple[LiveController, MachineChannel, RecordingLink]:
    store = ControllerStore(tmp_path / "home")
    await store.open()
    store.keys(create=True)
    config = ControllerConfig("ws://127.0.0.1:1", nacl.utils.random(32), b"\x01" * 16, "laptop")
    controller = LiveController(store, config)
    machine_keys = NodeKeys.generate()
    machine = MachineChannel(machine_keys.sign_public, machine_keys.card(Role.MACHINE, "box"))
    controller.machines[machine.key] = machine
    link = RecordingLink()
    controller.link = link  # type: ignore[assignment]
    return controller, machine, link


def _handshakes(link: RecordingLink) -> int:
    return sum(1 for _, body in link.sent if unwrap(body)[0] is Kind.SESSION_HANDSHAKE)


async def test_online_again_while_the_channel_stood_starts_a_new_handshake(
    tmp_path: Path,
) -> None:
    controller, machine, link = await _controller(tmp_path)
    try:
        await controller._on_event(PresenceChanged(machine.key, True))
        assert machine.handshake is not None and _handshakes(link) == 1
        machine.handshake = None
        machine.channel = object()  # type: ignore[assignment]  # an established channel
        await controller._on_event(PresenceChanged(machine.key, True))
        assert machine.channel is None
        assert machine.handshake is not None, "the reconnected machine got no handshake"
        assert _handshakes(link) == 2
    finally:
        await controller.store.close()


async def test_online_while_a_handshake_is_pending_keeps_it(tmp_path: Path) -> None:
    controller, machine, link = await _controller(tmp_path)
    try:
        await controller._on_event(PresenceChanged(machine.key, True))
        pending = machine.handshake
        await controller._on_event(PresenceChanged(machine.key, True))
        assert machine.handshake is pending and _handshakes(link) == 1
        await controller._on_event(PresenceChanged(machine.key, False))
        assert machine.handshake is None and machine.channel is None
    finally:
        await controller.store.close()
