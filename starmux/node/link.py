"""One authenticated WebSocket to the relay, as a node (controller or machine) uses it.

The asyncio adapter around the sans-I/O pieces (:mod:`starmux.relay_auth`,
:mod:`starmux.frames`, :mod:`starmux.control`). Shared by the controller and the
machine daemon, which are both nodes; the relay never imports it.

- :meth:`RelayLink.request` sends a control request and awaits its reply (matched
  by ``request_id``); a :class:`~starmux.control.Failure` reply raises
  :class:`RelayRefused` carrying the relay's code, message and hint.
- Everything else the relay sends (DATA, PRESENCE, NOTICE, ERROR) arrives as
  :class:`LinkEvent` through :meth:`RelayLink.events`; when the socket closes, a
  final :class:`Closed` event carries the close code.

Reconnecting is the caller's policy (the daemon retries forever; a CLI command
fails with a hint): :class:`~starmux.reconnect.Reconnect` decides, fed with
:func:`connect_failure` for a failed :meth:`RelayLink.connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import websockets

from starmux.codec import Message
from starmux.control import CONTROL, Failure, MachineRevocation, Notice, Presence, RouteError
from starmux.errors import ConnectionLost, RemoteProtocolError, StarmuxError
from starmux.frames import Frame, FrameType, encode_frame, parse_frame
from starmux.identity import IdentityCard, NodeKeys
from starmux.reconnect import LinkFailure, close_failure
from starmux.relay_auth import Authenticated, NodeAuth, RelayKeyMismatch

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 15.0
#: A connection whose sent data stays unacknowledged this long is dead (TCP_USER_TIMEOUT).
#: The WebSocket ping cannot tell: websockets' ping() first waits for the send buffer
#: to drain, which never happens on a connection that died silently (NAT forgot the
#: flow, the machine roamed) while output streams, so without this bound a busy daemon
#: would keep a dead connection until TCP gives up, ~15 minutes later.
UNACKNOWLEDGED_DATA_TIMEOUT = 30.0
M = TypeVar("M", bound=Message)


class RelayRefused(StarmuxError):
    """The relay answered a request with a failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message, hint=failure.hint or None)
        self.code = failure.code


class RelayUnreachable(ConnectionLost):
    """Could not connect or authenticate to the relay."""


@dataclass(frozen=True)
class Data:
    peer: bytes
    body: bytes


@dataclass(frozen=True)
class PresenceChanged:
    peer: bytes
    online: bool


@dataclass(frozen=True)
class NoticeReceived:
    notice: Notice


@dataclass(frozen=True)
class RevocationReceived:
    """The relay forwarded a controller's signed revoke of this machine (unverified)."""

    revocation: MachineRevocation


@dataclass(frozen=True)
class Undeliverable:
    peer: bytes
    code: str


@dataclass(frozen=True)
class Closed:
    code: int | None
    reason: str


LinkEvent = Data | PresenceChanged | NoticeReceived | RevocationReceived | Undeliverable | Closed


class RelayLink:
    def __init__(
        self, url: str, keys: NodeKeys, card: IdentityCard, *, pinned_relay_key: bytes | None
    ) -> None:
        self.url = url.rstrip("/")
        self._keys = keys
        self._card = card
        self._pin = pinned_relay_key
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self._ids = itertools.count(1)
        self.auth: Authenticated | None = None
        self.closed: Closed | None = None

    @property
    def relay_key(self) -> bytes:
        assert self.auth is not None
        return self.auth.relay_card.sign_public

    async def connect(self) -> Authenticated:
        """Connect and authenticate once. Raises RelayUnreachable, or CryptoError
        (e.g. :class:`~starmux.relay_auth.RelayKeyMismatch`) if the relay is not who we
        pinned, or ConnectionLost with the close code if the relay refused us."""
        ssl_context = ssl.create_default_context() if self.url.startswith("wss://") else None
        try:
            self._ws = await websockets.connect(
                self.url + "/v1/ws",
                compression=None,
                open_timeout=CONNECT_TIMEOUT,
                ssl=ssl_context,
                max_size=2**17,
                ping_interval=20,
                ping_timeout=20,
            )
            bound_unacknowledged_data(self._ws, UNACKNOWLEDGED_DATA_TIMEOUT)
        except (OSError, TimeoutError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
            raise RelayUnreachable(
                f"cannot reach the relay at {self.url}: {exc}",
                hint="check the URL, that the relay runs, and that this machine can reach it",
            ) from exc
        auth = NodeAuth(self._keys, self._card, pinned_relay_key=self._pin)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._ws.send(auth.receive_challenge(await self._receive_frame()))
                self.auth = auth.receive_welcome(await self._receive_frame())
        except BaseException:
            await self._ws.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return self.auth

    async def _receive_frame(self) -> Frame:
        assert self._ws is not None
        try:
            data = await self._ws.recv()
        except websockets.ConnectionClosed as exc:
            raise RelayClosedConnection(*close_code_and_reason(exc)) from exc
        except TimeoutError as exc:
            raise RelayUnreachable("the relay did not answer in time") from exc
        if isinstance(data, str):
            raise RemoteProtocolError("the relay sent text, not a frame")
        return parse_frame(data)

    async def _read_loop(self) -> None:
        closed = Closed(None, "connection lost")
        try:
            while True:
                frame = await self._receive_frame()
                self._dispatch(frame)
        except RelayClosedConnection as exc:
            closed = Closed(exc.code, exc.reason)
        except (RemoteProtocolError, OSError) as exc:
            closed = Closed(None, f"protocol error: {exc}")
        finally:
            self.closed = closed
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionLost("the relay connection closed"))
            self._pending.clear()
            self._events.put_nowait(closed)

    def _dispatch(self, frame: Frame) -> None:
        if frame.type is FrameType.DATA:
            self._events.put_nowait(Data(frame.peer, frame.body))
            return
        message = CONTROL.decode(frame.body)
        if frame.type is FrameType.RESPONSE:
            request_id = getattr(message, "request_id", None)
            future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Presence):
            self._events.put_nowait(PresenceChanged(frame.peer, message.online))
        elif isinstance(message, Notice):
            self._events.put_nowait(NoticeReceived(message))
        elif isinstance(message, MachineRevocation):
            self._events.put_nowait(RevocationReceived(message))
        elif isinstance(message, RouteError):
            self._events.put_nowait(Undeliverable(frame.peer, message.code))

    async def request(self, message: M, reply_type: type[Message] | None = None) -> Message:
        """Send a request (its ``request_id`` is assigned here) and await the reply."""
        ws = self._connected()
        request_id = next(self._ids)
        message = dataclasses.replace(message, request_id=request_id)  # type: ignore[type-var]
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await ws.send(encode_frame(FrameType.REQUEST, b"", CONTROL.encode(message)))
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reply = await future
        except TimeoutError as exc:
            raise RelayUnreachable(f"the relay did not answer {message.KIND} in time") from exc
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, Failure):
            raise RelayRefused(reply)
        if reply_type is not None and not isinstance(reply, reply_type):
            raise RemoteProtocolError(f"expected {reply_type.KIND}, got {reply.KIND}")
        return reply

    def _connected(self) -> websockets.ClientConnection:
        """The connection to send on; ConnectionLost if there is none now."""
        if self._ws is None or self.closed is not None:
            raise ConnectionLost("not connected to the relay")
        return self._ws

    async def send_data(self, peer: bytes, body: bytes) -> None:
        await self.send_data_many(((peer, body),))

    async def send_data_many(self, frames: Sequence[tuple[bytes, bytes]]) -> None:
        """DATA frames ``(peer, body)``, in order, written to the socket at once.

        A controller paging a hundred machines asks many of them for their next page
        in one turn; one write each would be one system call each (measured: most of
        what a sync request cost it). Each is still its own WebSocket message."""
        if not frames:
            return
        ws = self._connected()
        try:
            if len(frames) == 1:
                ((peer, body),) = frames
                await ws.send(encode_frame(FrameType.DATA, peer, body))
                return
            # send_context checks the connection is open, and on exit waits for the
            # write buffer to drain as send() does; the frames are framed here and
            # handed to the transport together (send_binary queues no end of stream,
            # so there is nothing else in what it has to send).
            async with ws.send_context():
                for peer, body in frames:
                    ws.protocol.send_binary(encode_frame(FrameType.DATA, peer, body))
                ws.transport.writelines(ws.protocol.data_to_send())
        except websockets.ConnectionClosed as exc:
            raise ConnectionLost("the relay connection closed") from exc

    async def next_event(self) -> LinkEvent:
        return await self._events.get()

    async def next_events(self, limit: int) -> list[LinkEvent]:
        """The next event (waiting for it) and up to ``limit`` - 1 more that are already
        queued, so a reader can handle a burst as one batch. Nothing follows Closed."""
        events = [await self._events.get()]
        while len(events) < limit and not isinstance(events[-1], Closed):
            try:
                events.append(self._events.get_nowait())
            except asyncio.QueueEmpty:
                break
        return events

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Events until (and including) :class:`Closed`."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Closed):
                return

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader


def close_code_and_reason(exc: websockets.ConnectionClosed) -> tuple[int | None, str]:
    """The relay's close code and reason, or, when no close frame came (the connection
    died), what the socket or the keepalive reported."""
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    if exc.sent is not None and exc.sent.reason:
        return None, exc.sent.reason  # e.g. our keepalive ping timed out
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return None, cause.strerror.lower()  # e.g. "connection timed out"
    return None, "connection lost"


def bound_unacknowledged_data(ws: websockets.ClientConnection, seconds: float) -> None:
    """Have the kernel fail the connection when sent data stays unacknowledged for
    ``seconds`` (Linux; elsewhere the WebSocket keepalive alone applies)."""
    sock = ws.transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))


class RelayClosedConnection(ConnectionLost):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"the relay closed the connection ({code}: {reason or 'no reason'})")
        self.code = code
        self.reason = reason


def connect_failure(exc: BaseException) -> LinkFailure:
    """What a failed :meth:`RelayLink.connect` means for reconnecting."""
    if isinstance(exc, RelayKeyMismatch):
        return LinkFailure.KEY_MISMATCH
    if isinstance(exc, RelayClosedConnection):
        return close_failure(exc.code, connected=False)
    if isinstance(exc, RelayUnreachable) and isinstance(exc.__cause__, ConnectionRefusedError):
        return LinkFailure.REFUSED
    return LinkFailure.UNREACHABLE
