"""A fresh channel gives the machine its window before the first sync request, so a
controller resyncing many machines at once is answered in pages of its share (not
48 KiB each: a hundred of those pass the 4 MiB the relay holds for one receiver).

A real controller (its store, its Noise_KK) talks to a real machine-side channel and
:class:`~starmux.resync.Feed` over a link that records what is sent."""

from __future__ import annotations

from pathlib import Path

import nacl.utils

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


async def test_the_window_goes_before_the_first_sync_request(tmp_path: Path) -> None:
    store = ControllerStore(tmp_path / "home")
    await store.open()
    try:
        keys = store.keys(create=True)
        config = ControllerConfig("ws://127.0.0.1:1", nacl.utils.random(32), b"\x01" * 16, "laptop")
        controller = LiveController(store, config)
        link = RecordingLink()
        controller.link = link  # type: ignore[assignment]
        machine_keys = NodeKeys.generate()
        machine = MachineChannel(machine_keys.sign_public, machine_keys.card(Role.MACHINE, "box"))
        controller.machines[machine.key] = machine
        # The others are mid-handshake, as at start-up: each will soon answer a sync.
        for n in range(MACHINES - 1):
            other = MachineChannel(bytes([n]) * 32, machine.card)
            other.handshake = object()  # type: ignore[assignment]
            controller.machines[other.key] = other

        await controller._handshake(machine)
        ((peer, hello),) = link.sent
        assert peer == machine.key
        channel, reply = respond(
            machine_keys, keys.card(Role.CONTROLLER, "laptop"), unwrap(hello)[1],
            relay_key=config.relay_key,
        )  # fmt: skip
        link.sent.clear()
        await controller._on_data(machine, reply)

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
        await controller._request_sync(machine)
        assert [type(opened(channel, body)) for _, body in link.sent] == [SyncRequest]
    finally:
        await store.close()


def opened(channel: LiveChannel, body: bytes) -> Message:
    kind, payload = unwrap(body)
    assert kind is Kind.SESSION_TRANSPORT
    return channel.open(payload)


async def test_a_batch_of_pages_from_many_machines_asks_for_more_in_one_write(
    tmp_path: Path,
) -> None:
    # A controller resyncing many machines answers each page with a request for the
    # next; the requests a batch of pages calls for go out together (one write, not
    # one system call each), every one sealed for its own machine.
    store = ControllerStore(tmp_path / "home")
    await store.open()
    try:
        keys = store.keys(create=True)
        config = ControllerConfig("ws://127.0.0.1:1", nacl.utils.random(32), b"\x01" * 16, "laptop")
        controller = LiveController(store, config)
        link = RecordingLink()
        controller.link = link  # type: ignore[assignment]
        channels: list[tuple[MachineChannel, LiveChannel]] = []
        for name in ("box", "gpu", "laptop-2"):
            machine_keys = NodeKeys.generate()
            machine = MachineChannel(
                machine_keys.sign_public, machine_keys.card(Role.MACHINE, name)
            )
            controller.machines[machine.key] = machine
            await controller._handshake(machine)
            ((_, hello),) = link.sent
            channel, reply = respond(
                machine_keys, keys.card(Role.CONTROLLER, "laptop"), unwrap(hello)[1],
                relay_key=config.relay_key,
            )  # fmt: skip
            link.sent.clear()
            await controller._on_data(machine, reply)
            for _, body in link.sent:  # the window and the first request: read, in turn
                opened(channel, body)
            link.sent.clear()
            channels.append((machine, channel))
        link.writes.clear()

        for n, (machine, _) in enumerate(channels, start=1):
            events = tuple(LoggedEvent(seq, 0.0, "s-1", b"x") for seq in range(1, n + 1))
            controller._pages.append((machine, EventPage(EPOCH, events, more=True, live=False)))
        await controller._apply_pages()

        assert link.writes == [len(channels)]
        for n, ((machine, channel), (peer, body)) in enumerate(
            zip(channels, link.sent, strict=True), start=1
        ):
            assert peer == machine.key
            assert opened(channel, body) == SyncRequest(EPOCH, n, 1000)
    finally:
        await store.close()
