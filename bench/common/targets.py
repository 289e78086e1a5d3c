"""How the load generator opens connections and sender → receiver pairs on each server.

- bare forwarder: a connection announces a 2-byte id; a message's first two bytes
  name the connection it goes to.
- starmux relay: real keys and the real relay auth; a pair is one controller account
  (open registration) and one machine paired to it through the ticket flow, exactly
  as ``tests/integration/conftest.py`` does it. The machine sends, the controller
  receives. An idle connection is an authenticated, unpaired machine.

Every pair is checked with one probe message before it is used.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from bench.common.wsclient import RawWebSocket, client_frame, connect
from starmux.codec import Message
from starmux.control import (
    CONTROL,
    AccountRegistered,
    CreateTicket,
    Failure,
    GrantMachine,
    OpenTicket,
    RegisterAccount,
    TicketCreated,
)
from starmux.frames import FrameType, encode_frame, parse_frame
from starmux.identity import NodeKeys, Role
from starmux.relay_auth import NodeAuth, grant_transcript

#: Marks where the send timestamp goes; the rest of the 1 KiB body is random, like ciphertext.
MARKER = b"\xa5STAMP\x5a\x00"
BODY = MARKER + os.urandom(1024 - len(MARKER))
SETUP_TIMEOUT = 20.0
T = TypeVar("T")


@dataclass
class Pair:
    sender: RawWebSocket
    receiver: RawWebSocket
    frame: bytes  # the sender's ready-made client frame, 1 KiB body
    stamp_at: int  # where the timestamp goes in ``frame``
    recv_stamp_at: int  # where it is in the payload the receiver gets
    check_offset: int = -1  # a received payload counts if its byte here is check_value
    check_value: int = 0

    def abort(self) -> None:
        self.sender.abort()
        self.receiver.abort()


class Target(Protocol):
    async def pair(self, index: int) -> Pair: ...

    async def idle(self, index: int) -> RawWebSocket: ...


class BareTarget:
    """The bare forwarder: announce a 2-byte id, then address messages by id."""

    def __init__(self, host: str, port: int, *, offer_deflate: bool = False) -> None:
        self.host, self.port = host, port
        self.offer_deflate = offer_deflate
        self._next_id = 1

    async def _connection(self) -> tuple[RawWebSocket, bytes]:
        ws = await connect(self.host, self.port, "/v1/ws", offer_deflate=self.offer_deflate)
        cid = self._next_id.to_bytes(2, "big")
        self._next_id += 1
        ws.send(cid)
        return ws, cid

    async def pair(self, index: int) -> Pair:
        receiver, receiver_id = await self._connection()
        sender, _ = await self._connection()
        payload = receiver_id + BODY
        frame = client_frame(payload)
        return Pair(sender, receiver, frame, frame.find(MARKER), payload.find(MARKER))

    async def idle(self, index: int) -> RawWebSocket:
        ws, _ = await self._connection()
        return ws


class StarmuxTarget:
    """The relay: real keys, real auth, real pairing through a ticket."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def _node(self, role: Role, name: str) -> tuple[RawWebSocket, NodeKeys]:
        ws = await connect(self.host, self.port, "/v1/ws")
        keys = NodeKeys.generate()
        auth = NodeAuth(keys, keys.card(role, name), pinned_relay_key=None)
        ws.send(auth.receive_challenge(parse_frame(await ws.recv())))
        auth.receive_welcome(parse_frame(await ws.recv()))
        return ws, keys

    @staticmethod
    async def _request(ws: RawWebSocket, message: Message) -> Message:
        ws.send(encode_frame(FrameType.REQUEST, b"", CONTROL.encode(message)))
        while True:
            frame = parse_frame(await ws.recv())
            if frame.type is FrameType.RESPONSE:
                reply = CONTROL.decode(frame.body)
                if isinstance(reply, Failure):
                    raise RuntimeError(f"relay refused {type(message).__name__}: {reply}")
                return reply

    async def pair(self, index: int) -> Pair:
        controller, controller_keys = await self._node(Role.CONTROLLER, f"bench-ctl-{index}")
        registered = await self._request(controller, RegisterAccount(1, ""))
        assert isinstance(registered, AccountRegistered)
        name = f"bench-machine-{index}"
        machine, machine_keys = await self._node(Role.MACHINE, name)
        ticket = await self._request(machine, CreateTicket(1))
        assert isinstance(ticket, TicketCreated)
        await self._request(controller, OpenTicket(2, ticket.ticket))
        now = time.time()
        card = machine_keys.card(Role.MACHINE, name).encode()
        signature = controller_keys.sign(grant_transcript(registered.account, card, now))
        await self._request(controller, GrantMachine(3, ticket.ticket, card, now, signature))
        while parse_frame(await machine.recv()).type is not FrameType.NOTICE:
            pass  # the PAIRED notice: from now on the relay routes between the two
        frame = client_frame(encode_frame(FrameType.DATA, controller_keys.sign_public, BODY))
        delivered = encode_frame(FrameType.DATA, machine_keys.sign_public, BODY)
        return Pair(
            machine,
            controller,
            frame,
            frame.find(MARKER),
            delivered.find(MARKER),
            check_offset=1,  # [0x93, type, ...]: only DATA frames count
            check_value=int(FrameType.DATA),
        )

    async def idle(self, index: int) -> RawWebSocket:
        ws, _ = await self._node(Role.MACHINE, f"bench-idle-{index}")
        return ws  # authenticated, unpaired


def make_target(kind: str, url: str, *, offer_deflate: bool = False) -> Target:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if kind == "bare":
        return BareTarget(host, port, offer_deflate=offer_deflate)
    return StarmuxTarget(host, port)


async def bounded_gather(count: int, limit: int, make: Callable[[int], Awaitable[T]]) -> list[T]:
    """``make(0..count-1)`` with at most ``limit`` running at once; the first error raises."""
    gate = asyncio.Semaphore(limit)

    async def one(index: int) -> T:
        async with gate:
            return await make(index)

    async with asyncio.timeout(SETUP_TIMEOUT + count / 100):
        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def probe(pair: Pair) -> None:
    """One message through the pair, retried until the route is up (ids race their hellos)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        pair.sender.write(pair.frame)
        try:
            async with asyncio.timeout(0.5):
                while True:
                    payload = await pair.receiver.recv()
                    ok = pair.check_offset < 0 or payload[pair.check_offset] == pair.check_value
                    if ok and MARKER in payload:
                        return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError("a pair does not route") from None


async def open_pairs(target: Target, count: int) -> list[Pair]:
    pairs = await bounded_gather(count, 32, target.pair)
    await bounded_gather(count, 64, lambda i: probe(pairs[i]))
    return pairs
