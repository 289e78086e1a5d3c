"""A minimal node for relay tests: real keys, real auth, raw frames over a WebSocket."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import websockets

from starmux.codec import Message
from starmux.control import CONTROL, Failure
from starmux.frames import Frame, FrameType, encode_frame, parse_frame
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.relay_auth import Authenticated, NodeAuth, grant_transcript, revoke_transcript

from ..timeouts import scaled

#: Waits take unscaled seconds and scale them (tests/timeouts.py).
TIMEOUT = 10.0
_request_ids = itertools.count(1)


@dataclass
class RelayNode:
    role: Role
    name: str = "node"
    keys: NodeKeys = field(default_factory=NodeKeys.generate)
    ws: websockets.ClientConnection | None = None
    auth: Authenticated | None = None
    #: frames read while waiting for another type; handed out first by recv_type
    pending: list[Frame] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.keys.sign_public

    @property
    def card(self) -> IdentityCard:
        return self.keys.card(self.role, self.name)

    async def connect(
        self,
        url: str,
        *,
        pin: bytes | None = None,
        local_host: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Authenticated:
        """``local_host`` binds the client end (e.g. ``127.0.0.2``: another address on
        loopback, for per-IP limits); ``headers`` go with the upgrade request."""
        self.ws = await websockets.connect(
            url + "/v1/ws",
            compression=None,
            max_size=2**20,
            local_addr=(local_host, 0) if local_host else None,
            additional_headers=headers,
        )
        auth = NodeAuth(self.keys, self.card, pinned_relay_key=pin)
        await self.ws.send(auth.receive_challenge(await self.recv()))
        self.auth = auth.receive_welcome(await self.recv())
        return self.auth

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        return await self._recv_within(scaled(timeout))

    async def _recv_within(self, seconds: float) -> Frame:
        assert self.ws is not None
        data = await asyncio.wait_for(self.ws.recv(), seconds)
        assert isinstance(data, bytes)
        return parse_frame(data)

    async def recv_type(self, frame_type: FrameType, timeout: float = TIMEOUT) -> Frame:
        """Next frame of ``frame_type``; frames of other types are kept for later."""
        for index, frame in enumerate(self.pending):
            if frame.type is frame_type:
                return self.pending.pop(index)
        deadline = time.monotonic() + scaled(timeout)
        while True:
            frame = await self._recv_within(max(0.01, deadline - time.monotonic()))
            if frame.type is frame_type:
                return frame
            self.pending.append(frame)

    async def send(self, frame_type: FrameType, peer: bytes, body: bytes) -> None:
        assert self.ws is not None
        await self.ws.send(encode_frame(frame_type, peer, body))

    async def request(self, message: Message) -> Message:
        await self.send(FrameType.REQUEST, b"", CONTROL.encode(message))
        reply = await self.recv_type(FrameType.RESPONSE)
        return CONTROL.decode(reply.body)

    async def expect_close(self, timeout: float = TIMEOUT) -> int:
        """Read until the relay closes; return the close code."""
        assert self.ws is not None
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    await self.ws.recv()
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, "connection dropped without a close frame"
            return closed.rcvd.code

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    def grant(self, account: bytes, machine_card: bytes, issued_at: float) -> bytes:
        return self.keys.sign(grant_transcript(account, machine_card, issued_at))

    def revocation(self, account: bytes, machine_key: bytes, issued_at: float) -> bytes:
        return self.keys.sign(revoke_transcript(account, machine_key, issued_at))


def ok(reply: Message) -> Message:
    assert not isinstance(reply, Failure), f"relay refused: {reply}"
    return reply
