"""A malicious relay: the real relay's key (as a thief of ``relay.key`` or the operator
would hold it), real auth, a real port, and then lies a daemon must not believe.

Run as a process: ``python rogue_relay.py KEY_FILE PORT MODE[,MODE...]``; each new
connection gets the next mode (the last one repeats). It prints one JSON line per
step (``listening``, ``connection``, ``ticket``) so a test can wait for events.

Modes:
- ``unpaired``: WELCOME says "unpaired" (as if the relay forgot the machine); answers
  ticket requests, then closes once a ticket was handed out.
- ``revoked``: WELCOME as a paired machine, then a bare REVOKED notice, a revocation
  signed by a key that never paired the machine, and close code 4003.
- ``refuse-revoked``: close code 4003 right after authentication (what the real relay
  does to a revoked key).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import nacl.utils
from websockets.asyncio.server import ServerConnection, serve

from starmux.close_codes import CloseCode
from starmux.control import (
    CONTROL,
    CreateTicket,
    MachineRevocation,
    Notice,
    NoticeEvent,
    SessionStatus,
    TicketCreated,
)
from starmux.frames import FrameType, encode_frame, parse_frame
from starmux.home import load_node_keys
from starmux.identity import NodeKeys, Role
from starmux.relay_auth import RelayAuth, revoke_transcript


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def main(key_file: Path, port: int, modes: list[str]) -> None:
    keys = load_node_keys(key_file)
    card = keys.card(Role.RELAY, "relay")
    connections = 0

    async def handle(ws: ServerConnection) -> None:
        nonlocal connections
        mode = modes[min(connections, len(modes) - 1)]
        connections += 1
        auth = RelayAuth(keys, card, now=time.time())
        await ws.send(auth.challenge_frame())
        node = auth.verify_response(parse_frame(bytes(await ws.recv())))  # type: ignore[arg-type]
        say("connection", mode=mode)
        if mode == "refuse-revoked":
            await ws.close(int(CloseCode.REVOKED), "this machine was revoked")
            return
        account = nacl.utils.random(16)
        if mode == "unpaired":
            await ws.send(auth.welcome_frame(node, SessionStatus.UNPAIRED, b"", now=time.time()))
            async for data in ws:
                frame = parse_frame(bytes(data))  # type: ignore[arg-type]
                request = CONTROL.decode(frame.body)
                if isinstance(request, CreateTicket):
                    reply = TicketCreated(
                        request.request_id, nacl.utils.random(16), time.time() + 600
                    )
                    await ws.send(encode_frame(FrameType.RESPONSE, b"", CONTROL.encode(reply)))
                    say("ticket")
                    await ws.close(1011, "going away")
            return
        await ws.send(auth.welcome_frame(node, SessionStatus.MACHINE, account, now=time.time()))
        key = node.sign_public
        stranger = NodeKeys.generate()  # signs like a controller, but never paired it
        now = time.time()
        forged = MachineRevocation(
            key,
            account,
            stranger.sign_public,
            now,
            stranger.sign(revoke_transcript(account, key, now)),
        )
        for message in (Notice(NoticeEvent.REVOKED, key, account, 0.0), forged):
            await ws.send(encode_frame(FrameType.NOTICE, b"", CONTROL.encode(message)))
        await ws.close(int(CloseCode.REVOKED), "revoked")

    async with serve(handle, "127.0.0.1", port, compression=None):
        say("listening")
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")))
