"""Authentication at the relay: every refusal with its documented close code."""

from __future__ import annotations

import pytest
import websockets

from starmux.close_codes import CloseCode
from starmux.control import CONTROL, AuthResponse, Failure, RegisterAccount, SessionStatus
from starmux.frames import FrameType, encode_frame
from starmux.identity import NodeKeys, Role
from starmux.relay_auth import NodeAuth, RelayKeyMismatch

from ..timeouts import poll_async
from .conftest import pair_machine, register_controller
from .node import RelayNode, ok
from .relay_process import RelayProcess


async def _raw_auth_frame(node: RelayNode, url: str) -> tuple[websockets.ClientConnection, bytes]:
    """Connect and compute a valid AUTH frame without sending it."""
    ws = await websockets.connect(url + "/v1/ws", compression=None)
    node.ws = ws
    auth = NodeAuth(node.keys, node.card, pinned_relay_key=None)
    return ws, auth.receive_challenge(await node.recv())


async def test_wrong_signature_is_refused(relay: RelayProcess) -> None:
    node = RelayNode(Role.CONTROLLER)
    ws, frame = await _raw_auth_frame(node, relay.url)
    from starmux.frames import parse_frame

    response = CONTROL.decode_as(parse_frame(frame).body, AuthResponse)
    forged = AuthResponse(response.card, response.client_nonce, bytes(64))
    await ws.send(encode_frame(FrameType.AUTH, b"", CONTROL.encode(forged)))
    assert await node.expect_close() == CloseCode.AUTH_FAILED


async def test_auth_signed_by_another_key_is_refused(relay: RelayProcess) -> None:
    victim = RelayNode(Role.CONTROLLER)
    attacker = NodeKeys.generate()
    ws, _ = await _raw_auth_frame(victim, relay.url)
    # The attacker presents the victim's card but signs with its own key.
    impostor = RelayNode(Role.CONTROLLER, keys=attacker)
    del impostor
    node_auth = NodeAuth(attacker, attacker.card(Role.CONTROLLER, "x"), pinned_relay_key=None)
    del node_auth
    body = AuthResponse(victim.card.encode(), bytes(32), attacker.sign(b"anything"))
    await ws.send(encode_frame(FrameType.AUTH, b"", CONTROL.encode(body)))
    assert await victim.expect_close() == CloseCode.AUTH_FAILED


async def test_replayed_nonce_is_refused(relay: RelayProcess) -> None:
    node = RelayNode(Role.CONTROLLER)
    ws1, captured = await _raw_auth_frame(node, relay.url)
    await ws1.send(captured)  # the legitimate login succeeds
    welcome = await node.recv()
    assert welcome.type is FrameType.WELCOME
    await ws1.close()
    # Replaying the captured, validly signed AUTH on a new connection fails: the
    # relay's nonce is fresh per connection.
    replayer = RelayNode(Role.CONTROLLER, keys=node.keys)
    replayer.ws = await websockets.connect(relay.url + "/v1/ws", compression=None)
    await replayer.recv()  # a new challenge, ignored by the replayer
    await replayer.ws.send(captured)
    assert await replayer.expect_close() == CloseCode.AUTH_FAILED


async def test_silent_client_times_out(relay_factory: object) -> None:
    relay = relay_factory(env={"STARMUX_RELAY_HANDSHAKE_TIMEOUT": "0.5"})  # type: ignore[operator]
    node = RelayNode(Role.MACHINE)
    node.ws = await websockets.connect(relay.url + "/v1/ws", compression=None)
    assert await node.expect_close() == CloseCode.AUTH_TIMEOUT


async def test_garbage_instead_of_auth_is_refused(relay: RelayProcess) -> None:
    node = RelayNode(Role.MACHINE)
    node.ws = await websockets.connect(relay.url + "/v1/ws", compression=None)
    await node.recv()
    await node.ws.send(b"\xc1\xff not msgpack")
    assert await node.expect_close() == CloseCode.AUTH_FAILED


async def test_pinned_relay_key_mismatch_is_refused_by_the_node(relay: RelayProcess) -> None:
    node = RelayNode(Role.CONTROLLER)
    with pytest.raises(RelayKeyMismatch, match="relay's key changed"):
        await node.connect(relay.url, pin=NodeKeys.generate().sign_public)


async def test_unknown_machine_gets_a_pairing_only_session(relay: RelayProcess) -> None:
    machine = RelayNode(Role.MACHINE)
    auth = await machine.connect(relay.url)
    assert auth.status is SessionStatus.UNPAIRED
    assert auth.account == b""
    # It may not register an account or route anywhere.
    reply = await machine.request(RegisterAccount(1, relay.registration_token or ""))
    assert isinstance(reply, Failure) and reply.code == "forbidden"


async def test_unpaired_machine_cannot_route(relay: RelayProcess) -> None:
    controller, _ = await register_controller(relay)
    machine = RelayNode(Role.MACHINE)
    await machine.connect(relay.url)
    await machine.send(FrameType.DATA, controller.key, b"hello?")
    error = await machine.recv_type(FrameType.ERROR)
    assert error.peer == controller.key
    with pytest.raises(TimeoutError):
        await controller.recv_type(FrameType.DATA, timeout=0.5)


async def test_registration_needs_the_token(relay: RelayProcess) -> None:
    controller = RelayNode(Role.CONTROLLER)
    auth = await controller.connect(relay.url)
    assert auth.status is SessionStatus.UNREGISTERED
    reply = await controller.request(RegisterAccount(1, "not-the-token"))
    assert isinstance(reply, Failure) and reply.code == "bad-token"
    reply = await controller.request(RegisterAccount(2, ""))
    assert isinstance(reply, Failure) and reply.code == "bad-token"
    ok(await controller.request(RegisterAccount(3, relay.registration_token or "")))
    # One-time: a second controller cannot reuse it.
    other = RelayNode(Role.CONTROLLER)
    await other.connect(relay.url)
    reply = await other.request(RegisterAccount(1, relay.registration_token or ""))
    assert isinstance(reply, Failure) and reply.code == "bad-token"
    # The first one is now a controller, also after reconnecting.
    await controller.close()
    again = RelayNode(Role.CONTROLLER, keys=controller.keys)
    assert (await again.connect(relay.url)).status is SessionStatus.CONTROLLER


async def test_revoked_machine_is_disconnected_and_refused(relay: RelayProcess) -> None:
    import time

    from starmux.control import MachineRevoked, NoticeEvent, RevokeMachine

    controller, account = await register_controller(relay)
    machine = await pair_machine(relay, controller, account)
    now = time.time()
    reply = ok(
        await controller.request(
            RevokeMachine(9, machine.key, now, controller.revocation(account, machine.key, now))
        )
    )
    assert isinstance(reply, MachineRevoked)
    notice = CONTROL.decode((await machine.recv_type(FrameType.NOTICE)).body)
    assert getattr(notice, "event", None) is NoticeEvent.REVOKED
    assert await machine.expect_close() == CloseCode.REVOKED
    again = RelayNode(Role.MACHINE, keys=machine.keys)
    again.ws = await websockets.connect(relay.url + "/v1/ws", compression=None)
    auth = NodeAuth(again.keys, again.card, pinned_relay_key=None)
    await again.ws.send(auth.receive_challenge(await again.recv()))
    assert await again.expect_close() == CloseCode.REVOKED


async def test_connections_per_ip_limit(relay_factory: object) -> None:
    relay = relay_factory(env={"STARMUX_RELAY_CONNECTIONS_PER_IP": "2"})  # type: ignore[operator]
    first, second = RelayNode(Role.MACHINE), RelayNode(Role.MACHINE)
    await first.connect(relay.url)
    await second.connect(relay.url)
    # Counted at accept, before any HTTP is parsed: the third socket is refused there.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(relay.url + "/v1/ws", compression=None)
    assert refused.value.response.status_code == 429
    await first.close()

    async def connect_fourth() -> RelayNode | None:
        # Nothing on the relay side to await: it frees the slot when it sees the close.
        node = RelayNode(Role.MACHINE)
        try:
            await node.connect(relay.url)
        except (websockets.ConnectionClosed, websockets.InvalidStatus, AssertionError):
            return None
        return node

    await poll_async(connect_fourth, within=10, what="a slot freed up after a connection closed")
