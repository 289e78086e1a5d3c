"""A malicious relay that tries to impersonate a paired machine, driven by our own core.

It stands where the relay is (the controller's relay URL points at it) and forwards
the real relay's authentication untouched, so the controller's pin of the relay key
holds: this is the relay operator, or whoever holds ``relay.key``. Then it lies:

- it rewrites every ``MachineList`` with :attr:`MaliciousRelay.forge`;
- it keeps every DATA frame the controller addresses to the victim machine and
  answers it as the machine would, with its own keys: the ``Noise_KK`` responder
  of :mod:`starmux.live_channel`, then a sync answer and an ack for every command,
  keeping what it decrypted (:attr:`MaliciousRelay.stolen`);
- it can hide the real machine's presence notices.

Everything else is forwarded both ways, as an honest relay would route it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import websockets

from starmux.control import (
    CONTROL,
    AuthChallenge,
    AuthResponse,
    ListMachines,
    MachineInfo,
    MachineList,
)
from starmux.e2e import Kind, unwrap
from starmux.errors import CryptoError, StarmuxError
from starmux.frames import FrameType, encode_frame, parse_frame
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.live_channel import LiveChannel, respond
from starmux.messages import APP, CommandAck, CommandEnvelope, EventPage, SyncRequest

#: What the controller is told the machine list is, given the real one.
Forge = Callable[[MachineList], MachineList]


def honest(listing: MachineList) -> MachineList:
    return listing


@dataclass
class MaliciousRelay:
    upstream: str  # ws://host:port of the real relay
    victim: bytes  # the paired machine's key the attacker answers for
    attacker: NodeKeys = field(default_factory=NodeKeys.generate)
    forge: Forge = honest
    hide_victim_presence: bool = False
    #: every command the attacker decrypted (APP-encoded bodies, decoded)
    stolen: list[object] = field(default_factory=list)
    handshakes_completed: int = 0
    handshakes_refused: int = 0
    refused: threading.Event = field(default_factory=threading.Event)
    server: websockets.Server | None = None
    url: str = ""

    def impostor_card(self, name: str) -> IdentityCard:
        return self.attacker.card(Role.MACHINE, name)

    def impostor_info(self, name: str, key: bytes | None = None) -> MachineInfo:
        """A listing entry for ``key`` (default: the victim's) with the attacker's card."""
        card = self.impostor_card(name).encode()
        return MachineInfo(key or self.victim, card, True, time.time(), None)

    async def start(self) -> MaliciousRelay:
        self.server = await websockets.serve(self._handle, "127.0.0.1", 0, compression=None)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, client: websockets.ServerConnection) -> None:
        async with websockets.connect(self.upstream + "/v1/ws", compression=None) as relay:
            session = _Session(self, client)

            async def down() -> None:
                async for data in relay:
                    assert isinstance(data, bytes)
                    out = session.from_relay(data)
                    if out is not None:
                        await client.send(out)

            async def up() -> None:
                async for data in client:
                    assert isinstance(data, bytes)
                    if await session.from_controller(data):
                        await relay.send(data)

            tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()


class _Session:
    """One controller connection through the malicious relay."""

    def __init__(self, relay: MaliciousRelay, client: websockets.ServerConnection) -> None:
        self.relay = relay
        self.client = client
        self.relay_key = b""
        self.controller: IdentityCard | None = None
        self.listing_requests: set[int] = set()
        self.channel: LiveChannel | None = None

    def from_relay(self, data: bytes) -> bytes | None:
        frame = parse_frame(data)
        if frame.type is FrameType.CHALLENGE:
            challenge = CONTROL.decode_as(frame.body, AuthChallenge)
            self.relay_key = IdentityCard.decode(challenge.relay_card).sign_public
        elif frame.type is FrameType.RESPONSE:
            reply = CONTROL.decode(frame.body)
            if isinstance(reply, MachineList) and reply.request_id in self.listing_requests:
                forged = self.relay.forge(reply)
                return encode_frame(FrameType.RESPONSE, b"", CONTROL.encode(forged))
        elif frame.type is FrameType.PRESENCE and frame.peer == self.relay.victim:
            return None if self.relay.hide_victim_presence else data
        return data

    async def from_controller(self, data: bytes) -> bool:
        """Handle a frame from the controller; True: forward it to the real relay."""
        frame = parse_frame(data)
        if frame.type is FrameType.AUTH:
            self.controller = IdentityCard.decode(CONTROL.decode_as(frame.body, AuthResponse).card)
        elif frame.type is FrameType.REQUEST:
            request = CONTROL.decode(frame.body)
            if isinstance(request, ListMachines):
                self.listing_requests.add(request.request_id)
        elif frame.type is FrameType.DATA and frame.peer == self.relay.victim:
            await self._as_victim(frame.body)
            return False
        return True

    async def _as_victim(self, body: bytes) -> None:
        kind, payload = unwrap(body)
        if kind is Kind.SESSION_HANDSHAKE:
            assert self.controller is not None
            try:
                self.channel, reply = respond(
                    self.relay.attacker, self.controller, payload, relay_key=self.relay_key
                )
            except CryptoError:
                self.channel = None
                self.relay.handshakes_refused += 1
                self.relay.refused.set()
                return
            self.relay.handshakes_completed += 1
            await self._send(reply)
        elif kind is Kind.SESSION_TRANSPORT and self.channel is not None:
            try:
                message = self.channel.open(payload)
            except StarmuxError:
                return
            if isinstance(message, SyncRequest):
                answer = EventPage("0123456789abcdef", (), more=False, live=False)
                await self._send(self.channel.seal(answer))
            elif isinstance(message, CommandEnvelope):
                self.relay.stolen.append(APP.decode(message.body))
                ack = CommandAck(message.command_id, True, "", "", "")
                await self._send(self.channel.seal(ack))

    async def _send(self, body: bytes) -> None:
        await self.client.send(encode_frame(FrameType.DATA, self.relay.victim, body))
