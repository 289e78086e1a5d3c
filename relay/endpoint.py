"""The WebSocket endpoint ``/v1/ws``: authenticate, then pump frames.

Thin by design: it moves bytes between the socket and the core (frame parser,
:mod:`starmux.relay_auth`, :mod:`relay.requests`) and enforces limits. The hot
path for a DATA frame is: parse the envelope → rate check → look up the peer →
check :func:`may_route` → write the re-addressed frame, or queue it if the receiver
is behind. The body is never read. While the connection's task waits for its next
message, that path runs as the socket is read (:mod:`relay.direct_frames`);
everything else (requests, other encodings, anything refused) waits for the task,
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from time import perf_counter

from starlette.websockets import WebSocket, WebSocketDisconnect

from starmux.close_codes import CloseCode
from starmux.codec import Message
from starmux.control import CONTROL, Failure, FailureCode, RouteError, SessionStatus
from starmux.errors import CryptoError, FrameError, RemoteProtocolError
from starmux.frames import FrameType, data_head, encode_frame, parse_frame, readdress_data_from
from starmux.identity import IdentityCard, Role
from starmux.relay_auth import RelayAuth

from .addresses import ip_bucket
from .admission import UPGRADED_EXTENSION
from .device_requests import install as install_device_requests
from .direct_frames import DIRECT_EXTENSION
from .peer import Peer
from .ratelimit import FrameLimiter
from .registry import RegistryError
from .requests import HANDLERS, announce_presence, greet_controller, send_control
from .routing import may_route
from .state import RelayState
from .web_push import install as install_web_push

log = logging.getLogger("starmux.relay")

install_device_requests(HANDLERS)
install_web_push(HANDLERS)
_UNREACHABLE = CONTROL.encode(RouteError(FailureCode.UNREACHABLE, "no such peer online for you"))


async def _reject(websocket: WebSocket, state: RelayState, code: CloseCode, reason: str) -> None:
    state.metrics.closes[int(code)] += 1
    with contextlib.suppress(Exception):
        await websocket.close(int(code), reason)


async def _receive_bytes(websocket: WebSocket) -> bytes:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    data = message.get("bytes")
    if data is None:
        raise FrameError("text messages are not frames")
    return data  # type: ignore[no-any-return]


async def _authenticate(
    websocket: WebSocket, state: RelayState
) -> tuple[IdentityCard, SessionStatus, bytes] | None:
    """Run the auth exchange; None if the connection was refused (and closed)."""
    auth = RelayAuth(state.keys, state.card, now=state.clock())
    try:
        async with asyncio.timeout(state.config.limits.handshake_timeout):
            await websocket.send_bytes(auth.challenge_frame())
            data = await _receive_bytes(websocket)
            card = auth.verify_response(parse_frame(data, max_size=4096))
            key = card.sign_public
            # Before any registry read: a key reconnecting in a loop must not make
            # every other authentication wait on the registry.
            if not state.auths_by_key.take(key.hex(), time.monotonic()):
                state.metrics.refused["auth-rate"] += 1
                await _reject(websocket, state, CloseCode.RATE_LIMITED, "authenticating too often")
                return None
            if key == state.probe_keys.sign_public:
                status, account = SessionStatus.CONTROLLER, b""
            elif card.role is Role.CONTROLLER:
                record = await state.registry.controller(key)
                if record is None and await state.registry.is_removed_device(key):
                    state.metrics.auth_failures["device-removed"] += 1
                    reason = "this device was removed from its account"
                    await _reject(websocket, state, CloseCode.DEVICE_REMOVED, reason)
                    return None
                status = SessionStatus.CONTROLLER if record else SessionStatus.UNREGISTERED
                account = record.account if record else b""
            else:
                # One lookup: a revoked machine's record says so (revocations are
                # permanent and machine records are never deleted).
                machine = await state.registry.machine(key)
                if machine is not None and machine.revoked_at is not None:
                    state.metrics.auth_failures["revoked"] += 1
                    await _reject(websocket, state, CloseCode.REVOKED, "this machine was revoked")
                    return None
                status = SessionStatus.MACHINE if machine else SessionStatus.UNPAIRED
                account = machine.account if machine else b""
            await websocket.send_bytes(auth.welcome_frame(card, status, account, now=state.clock()))
            return card, status, account
    except TimeoutError:
        state.metrics.auth_failures["timeout"] += 1
        await _reject(websocket, state, CloseCode.AUTH_TIMEOUT, "authentication timed out")
    except (CryptoError, RemoteProtocolError):
        state.metrics.auth_failures["invalid"] += 1
        await _reject(websocket, state, CloseCode.AUTH_FAILED, "authentication failed")
    except WebSocketDisconnect:
        state.metrics.auth_failures["disconnected"] += 1
    return None


async def websocket_endpoint(websocket: WebSocket) -> None:
    state: RelayState = websocket.app.state.relay
    # The client's address (a trusted proxy's X-Forwarded-For already applied by
    # uvicorn), as the bucket per-IP limits count: IPv6 per /64.
    ip = ip_bucket(websocket.client.host) if websocket.client else "?"
    await websocket.accept()
    extensions = websocket.scope.get("extensions") or {}
    upgraded = extensions.get(UPGRADED_EXTENSION)
    if upgraded is not None:
        upgraded()  # the upgrade deadline ends; handshake_timeout takes over
    state.metrics.connections_total += 1
    if state.shutting_down:
        await _reject(websocket, state, CloseCode.RESTARTING, "relay is restarting")
        return
    if state.connections_per_ip.get(ip, 0) >= state.config.limits.connections_per_ip:
        await _reject(websocket, state, CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
        return
    state.connections_per_ip[ip] = state.connections_per_ip.get(ip, 0) + 1
    try:
        outcome = await _authenticate(websocket, state)
        if outcome is not None:
            await _serve(websocket, state, ip, *outcome)
    finally:
        remaining = state.connections_per_ip[ip] - 1
        if remaining:
            state.connections_per_ip[ip] = remaining
        else:
            del state.connections_per_ip[ip]


def _on_close(state: RelayState) -> object:
    def detach(peer: Peer) -> None:
        if state.table.detach(peer):
            announce_presence(state, peer, online=False)

    return detach


async def _serve(
    websocket: WebSocket,
    state: RelayState,
    ip: str,
    card: IdentityCard,
    status: SessionStatus,
    account: bytes,
) -> None:
    limits = state.config.limits
    extensions = websocket.scope.get("extensions") or {}
    peer = Peer(
        websocket,
        key=card.sign_public,
        card=card.encode(),
        status=status,
        account=account,
        ip=ip,
        max_queue=limits.send_queue_frames,
        max_queue_bytes=limits.send_queue_bytes,
        budget=state.send_budget,
        direct=extensions.get(DIRECT_EXTENSION),
        limiter=FrameLimiter(
            limits.frames_per_second,
            limits.frame_burst,
            limits.bytes_per_second,
            limits.byte_burst,
        ),
        metrics=state.metrics,
        on_close=_on_close(state),  # type: ignore[arg-type]
    )
    replaced = state.table.attach(peer)
    if replaced is not None:
        replaced.on_close = lambda _peer: None  # it is already detached
        replaced.close(CloseCode.REPLACED, "this key connected again")
    announce_presence(state, peer, online=True)
    if status is SessionStatus.CONTROLLER and account:
        greet_controller(state, peer)
    try:
        await _pump(websocket, state, peer)
    except WebSocketDisconnect:
        pass
    finally:
        peer.close_silently()
        await peer.finish()
        if peer.status in (SessionStatus.MACHINE, SessionStatus.CONTROLLER):
            with contextlib.suppress(Exception):
                await state.registry.touch(peer.key, now=state.clock())


class _Router:
    """The hot path, per frame, for one connection's frames.

    :meth:`route` routes a well-formed DATA frame within the limits; it returns
    False, having done nothing, for anything else (the task's path in :func:`_pump`
    handles and counts it). It runs once per routed frame, either as the socket is
    read (:mod:`relay.direct_frames`) or from the task, so what can be is looked up
    once, when the connection is served; in slots rather than a closure's cells,
    because every idle connection holds one.
    """

    __slots__ = ("head", "limiter", "max_size", "metrics", "peer", "table")

    def __init__(self, state: RelayState, peer: Peer) -> None:
        self.peer = peer
        self.metrics = state.metrics
        self.table = state.table
        self.max_size = state.config.limits.max_frame_size
        self.limiter = peer.limiter
        self.head = data_head(peer.key)  # what precedes the body of the re-addressed frames

    def route(self, data: bytes) -> bool:
        peer = self.peer
        if peer.closed:
            return True  # closing: nothing more is read from it
        size = len(data)
        if size > self.max_size:
            return False
        routed = readdress_data_from(data, self.head)
        if routed is None:
            return False
        now = perf_counter()
        if not self.limiter.take(size, now):
            self.metrics.drops["flood"] += 1
            peer.close(CloseCode.FLOOD, "too many frames or bytes per second")
            return True
        self.forward(routed, size, now)
        return True

    def forward(self, routed: tuple[bytes, bytes], size: int, now: float) -> None:
        """Deliver ``(destination, frame)``, or tell the sender (never a silent drop)
        without saying why."""
        peer = self.peer
        metrics = self.metrics
        destination = self.table.get(routed[0])
        if destination is not None and may_route(peer, destination):
            if destination.deliver(routed[1], now):
                metrics.frames_routed += 1
                metrics.bytes_routed += size
            return
        metrics.drops["unreachable" if destination is None else "forbidden"] += 1
        peer.deliver(encode_frame(FrameType.ERROR, routed[0], _UNREACHABLE), now)


async def _pump(websocket: WebSocket, state: RelayState, peer: Peer) -> None:
    metrics = state.metrics
    max_size = state.config.limits.max_frame_size
    router = _Router(state, peer)
    route = router.route
    direct = peer.direct
    while not peer.closed:
        if direct is None:
            message = await websocket.receive()
        else:
            message = await direct.receive_routing(route)
        data = message.get("bytes")
        if data is None:
            if message["type"] == "websocket.disconnect":
                return
            peer.close(CloseCode.PROTOCOL_ERROR, "text messages are not frames")
            return
        if route(data):
            continue
        now = time.perf_counter()
        size = len(data)
        if size > max_size:
            metrics.drops["too-large"] += 1
            peer.close(CloseCode.FRAME_TOO_LARGE, "frame too large")
            return
        if not peer.limiter.take(size, now):
            metrics.drops["flood"] += 1
            peer.close(CloseCode.FLOOD, "too many frames or bytes per second")
            return
        try:
            frame = parse_frame(data, max_size=max_size)
        except FrameError:
            metrics.drops["malformed"] += 1
            peer.close(CloseCode.PROTOCOL_ERROR, "malformed frame")
            return
        if frame.type is FrameType.REQUEST:
            await _handle_request(state, peer, frame.body)
            continue
        if frame.type is not FrameType.DATA:
            metrics.drops["unexpected-type"] += 1
            peer.close(CloseCode.PROTOCOL_ERROR, "unexpected frame type")
            return
        # A DATA frame in another (valid) encoding than the one every node writes.
        routed = frame.peer, encode_frame(FrameType.DATA, peer.key, frame.body)
        router.forward(routed, size, now)


async def _handle_request(state: RelayState, peer: Peer, body: bytes) -> None:
    try:
        request = CONTROL.decode(body)
    except RemoteProtocolError:
        state.metrics.drops["malformed"] += 1
        peer.close(CloseCode.PROTOCOL_ERROR, "malformed request")
        return
    handler = HANDLERS.get(type(request))
    request_id: int = getattr(request, "request_id", 0)
    if handler is None:
        peer.close(CloseCode.PROTOCOL_ERROR, "not a request")
        return
    now = time.monotonic()
    if not state.requests_by_key.take(peer.key.hex(), now):
        # No client of ours sends requests this fast: answering each one would cost
        # more than the flood itself, so the connection goes, like a frame flood.
        state.metrics.refused["request-rate"] += 1
        peer.close(CloseCode.FLOOD, "too many requests per second")
        return
    if not state.requests_by_ip.take(peer.ip, now):
        state.metrics.refused["request-rate-ip"] += 1
        reply: Message = Failure(
            request_id,
            FailureCode.RATE_LIMITED,
            "too many requests from this address",
            "wait a second",
        )
        send_control(peer, FrameType.RESPONSE, reply)
        return
    try:
        reply = await handler(state, peer, request)
    except RegistryError as exc:
        reply = Failure(request_id, exc.code, exc.message, exc.hint or "")
    send_control(peer, FrameType.RESPONSE, reply)
