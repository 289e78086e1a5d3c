"""A fresh channel gives the machine its window before the first sync request, so a
controller resyncing many machines at once is answered in pages of its share (not
48 KiB each: a hundred of those pass the 4 MiB the relay holds for one receiver);
and the requests a batch of pages calls for go out in one write.

A real controller (its store, its Noise_KK) talks to real machine-side channels and
:class:`~starmux.resync.Feed` over a link that records what is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nacl.utils
import pytest

from starmux.client.live import LiveController, MachineChannel
from starmux.client.store import ControllerConfig, ControllerStore
from starmux.codec import Message
from starmux.e2e import Kind, unwrap
from starmux.identity import NodeKeys, Role
from starmux.live_channel import LiveChannel, respond
from starmux.live_window import window_for
from starmux.messages import EventPage, LiveAck, LoggedEvent, SyncRequest
from starmux.resync import PAGE_BYTES, Feed, first_page

from .test_live_presence import RecordingLink

MACHINES = 100
EPOCH = "0123456789abcdef"


@dataclass
class Controller:
    live: LiveController
    link: RecordingLink
    keys: NodeKeys
    config: ControllerConfig

    def add_machine(self, name: str) -> tuple[MachineChannel, NodeKeys]:
        machine_keys = NodeKeys.generate()
        machine = MachineChannel(machine_keys.sign_public, machine_keys.card(Role.MACHINE, name))
        self.live.machines[machine.key] = machine
        return machine, machine_keys

    async def open_channel(self, machine: MachineChannel, machine_keys: NodeKeys) -> LiveChannel:
        """The controller's KK handshake, answered by the machine's side; what the
        controller sends on the new channel stays in ``link.sent``."""
        self.link.sent.clear()
        await self.live._handshake(machine)
        ((peer, hello),) = self.link.sent
        assert peer == machine.key
        channel, reply = respond(
            machine_keys, self.keys.card(Role.CONTROLLER, "laptop"), unwrap(hello)[1],
            relay_key=self.config.relay_key,
        )  # fmt: skip
        self.link.sent.clear()
        await self.live._on_data(machine, reply)
        return channel


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    store = ControllerStore(tmp_path / "home")
    await store.open()
    try:
        keys = store.keys(create=True)
        config = ControllerConfig("ws://127.0.0.1:1", nacl.utils.random(32), b"\x01" * 16, "laptop")
        live = LiveController(store, config)
        link = RecordingLink()
        live.link = link  # type: ignore[assignment]
        yield Controller(live, link, keys, config)
    finally:
        await store.close()


async def test_the_window_goes_before_the_first_sync_request(controller: Controller) -> None:
    link = controller.link
    machine, machine_keys = controller.add_machine("box")
    # The others are mid-handshake, as at start-up: each will soon answer a sync.
    for n in range(MACHINES - 1):
        other = MachineChannel(bytes([n]) * 32, machine.card)
        other.handshake = object()  # type: ignore[assignment]
        controller.live.machines[other.key] = other

    channel = await controller.open_channel(machine, machine_keys)

    said = [opened(channel, body) for _, body in link.sent]
    share = window_for(MACHINES)
    assert said == [LiveAck("none", 0, share.pages, share.bytes), SyncRequest("", 0, 1000)]

    # The machine's side: its first answer fits the share, not a 48 KiB page.
    feed = Feed()
    for message in said:
        if isinstance(message, LiveAck):
            feed.acked(message, epoch=EPOCH)
    assert isinstance(said[1], SyncRequest)
    read = feed.read_for(said[1], epoch=EPOCH)
    assert read.max_bytes == share.bytes < PAGE_BYTES
    log = [LoggedEvent(seq, 0.0, "s-1", b"x" * 1024) for seq in range(1, 200)]
    page = feed.answer(read, first_page(log, read.max_bytes), epoch=EPOCH, last_seq=199)
    assert 0 < sum(len(e.body) + 40 for e in page.events) <= share.bytes and page.more

    # Once given, the window is not given again with every request.
    link.sent.clear()
    await controller.live._request_sync(machine)
    assert [type(opened(channel, body)) for _, body in link.sent] == [SyncRequest]


async def test_a_batch_of_pages_from_many_machines_asks_for_more_in_one_write(
    controller: Controller,
) -> None:
    # A controller resyncing many machines answers each page with a request for the
    # next; the requests a batch of pages calls for go out together (one write, not
    # one system call each), every one sealed for its own machine.
    link = controller.link
    channels: list[tuple[MachineChannel, LiveChannel]] = []
    for name in ("box", "gpu", "laptop-2"):
        machine, machine_keys = controller.add_machine(name)
        channel = await controller.open_channel(machine, machine_keys)
        for _, body in link.sent:  # the window and the first request: read, in turn
            opened(channel, body)
        channels.append((machine, channel))
    link.sent.clear()
    link.writes.clear()

    for n, (machine, _) in enumerate(channels, start=1):
        events = tuple(LoggedEvent(seq, 0.0, "s-1", b"x") for seq in range(1, n + 1))
        controller.live._pages.append((machine, EventPage(EPOCH, events, more=True, live=False)))
    await controller.live._apply_pages()

    assert link.writes == [len(channels)]
    for n, ((machine, channel), (peer, body)) in enumerate(
        zip(channels, link.sent, strict=True), start=1
    ):
        assert peer == machine.key
        assert opened(channel, body) == SyncRequest(EPOCH, n, 1000)


def opened(channel: LiveChannel, body: bytes) -> Message:
    kind, payload = unwrap(body)
    assert kind is Kind.SESSION_TRANSPORT
    return channel.open(payload)
