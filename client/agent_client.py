"""The commands' side of the controller agent: find it (start it if needed), send one
request, read stream items and the final reply.

Blocking sockets on purpose: a command sends one request and reads its answer, so an
event loop would only add start-up time to every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from starmux import agent_protocol as wire
from starmux.errors import StarmuxError, UsageError

LOG_FILE = "controller.log"  # the agent's log when started in the background

#: How long a command waits for an agent that is starting (its own or a racing one).
START_WAIT = 20.0
_UNIX_PATH_MAX = 107
_READ_CHUNK = 256 * 1024


class AgentUnavailable(StarmuxError):
    """The controller agent cannot be reached or started."""


class AgentRefused(StarmuxError):
    """The agent answered with a failure (``code`` as on the wire)."""

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message, hint=hint or None)
        self.code = code
        # A refusal of the request itself is the user's (2); "too late", "refused"
        # and the like are answers about the world (1).
        self.exit_code = 2 if code in ("bad-request", "not-found") else 1


def _connect_once(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    return sock


def socket_path(home: Path) -> Path:
    return home / wire.SOCKET_FILE


def connect(home: Path, *, start: bool = True) -> socket.socket:
    """A connection to the home's agent, starting the agent if none runs.

    The fast path (an agent answers) imports nothing more; finding out why not and
    starting one needs the process and store modules."""
    path = socket_path(home)
    if len(str(path).encode()) > _UNIX_PATH_MAX:
        raise AgentUnavailable(
            f"the controller home path is too long for a Unix socket: {home}",
            hint="use a shorter STARMUX_HOME (Unix sockets allow 107 bytes)",
        )
    sock = _connect_once(path)
    if sock is not None:
        return sock
    from starmux.node.process import ProcessAlreadyRunning, ProcessStartError

    from .agent_process import read_status, start_in_background
    from .store import KEY_FILE, NotInitialized

    if not (home / KEY_FILE).exists():
        raise NotInitialized(home)
    if not start:
        raise AgentUnavailable(
            "the controller agent is not running", hint="start it: starmux controller start"
        )
    failure: StarmuxError | None = None
    status = read_status(home)
    if status is None or not status.alive:
        try:
            start_in_background(home)
        except ProcessAlreadyRunning:
            pass  # another command started it a moment ago: connect to that one
        except ProcessStartError as exc:
            failure = exc
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        sock = _connect_once(path)
        if sock is not None:
            return sock
        status = read_status(home)
        if failure is not None and (status is None or not status.alive):
            break
        time.sleep(0.02)
    raise AgentUnavailable(
        "cannot reach the controller agent"
        + (f": {failure.message}" if failure is not None else f" at {path}"),
        hint=f"see `starmux controller status` and its log {home / LOG_FILE}",
    )


class _Lines:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def __iter__(self) -> Iterator[bytes]:
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line, self.buffer = self.buffer[:newline], self.buffer[newline + 1 :]
                yield line
                continue
            if len(self.buffer) > wire.MAX_REPLY:
                raise AgentUnavailable("the controller agent sent an oversized line")
            chunk = self.sock.recv(_READ_CHUNK)
            if not chunk:
                return
            self.buffer += chunk


def stream(home: Path, op: str, **fields: Any) -> Iterator[wire.Item | wire.Reply]:
    """Send one request; yield its stream items, then its final reply (ok or not)."""
    line = wire.encode_request(op, **fields)
    sock = connect(home)
    with contextlib.closing(sock):
        try:
            sock.sendall(line)
            for raw in _Lines(sock):
                try:
                    answer = wire.parse_reply(raw)
                except wire.AgentProtocolError as exc:
                    raise AgentUnavailable(
                        f"the controller agent answered something unreadable: {exc.message}",
                        hint=exc.hint or "restart it: starmux controller stop",
                    ) from exc
                yield answer
                if isinstance(answer, wire.Reply):
                    return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
        raise AgentUnavailable(
            "the controller agent closed the connection without an answer",
            hint=f"see its log {home / LOG_FILE}; the next command starts it again",
        )


def call(home: Path, op: str, **fields: Any) -> dict[str, Any]:
    """One request, one final reply (raises :class:`AgentRefused` on a failure)."""
    for answer in stream(home, op, **fields):
        if isinstance(answer, wire.Reply):
            return checked(answer)
    raise AgentUnavailable("no reply")  # pragma: no cover - stream always ends in one


def checked(reply: wire.Reply) -> dict[str, Any]:
    if not reply.ok:
        if reply.code == "version":
            raise UsageError(reply.error, hint=reply.hint)
        raise AgentRefused(reply.code, reply.error, reply.hint)
    return reply.fields


#: A watch whose agent went away (stopped, upgraded, crashed) reconnects, starting a
#: new one, and resumes after the last event it printed; this many times in a row
#: without progress, then it gives up and says why.
WATCH_RESUMES = 5


def watch(
    home: Path,
    session: str,
    *,
    write: Callable[[str, bytes], None],
    status: Callable[[str], None],
    follow: bool = True,
) -> dict[str, Any]:
    """Print a session's output (and follow it live); returns the final reply."""
    printed = 0
    failures = 0
    while True:
        progress = printed
        try:
            for answer in stream(
                home, "watch" if follow else "logs", session=session, after=printed
            ):
                if isinstance(answer, wire.Reply):
                    return checked(answer)
                if answer.kind == "output":
                    write(answer.fields["stream"], answer.fields["data"])
                    printed = answer.fields["seq"]
                elif answer.kind == "status":
                    status(_status_text(answer.fields))
                    printed = answer.fields["seq"]
                else:
                    status(answer.fields["text"])
        except AgentUnavailable:
            failures = 0 if printed > progress else failures + 1
            if not follow or failures >= WATCH_RESUMES:
                raise
            status("the controller agent went away; resuming")


def _status_text(fields: dict[str, Any]) -> str:
    code, reason = fields["exit_code"], fields["reason"]
    text = str(fields["status"]) + (f" ({code})" if code is not None else "")
    # Why a session ended badly (e.g. "could not start: … not found"); the routine
    # details of running ("pid 123") are left out.
    if reason and fields["status"] not in ("running", "succeeded"):
        text += f": {reason}"
    return text


@contextlib.contextmanager
def relay_link_released(home: Path) -> Iterator[None]:
    """While this block runs, the agent (if one runs) stays off the relay, so a command
    that needs its own connection with the device's key (pairing) is not closed by
    the agent's and does not close it."""
    from .store import NotInitialized

    try:
        sock = connect(home, start=False)
    except (AgentUnavailable, NotInitialized):
        yield
        return
    with contextlib.closing(sock):
        sock.sendall(wire.encode_request("release-link"))
        for raw in _Lines(sock):
            checked(_as_reply(wire.parse_reply(raw)))
            break
        yield


@contextlib.asynccontextmanager
async def relay_link_released_async(home: Path) -> AsyncIterator[None]:
    """:func:`relay_link_released` for a coroutine: the agent is asked (over its
    socket, off the loop) before the block runs and given the link back after."""
    with contextlib.ExitStack() as stack:
        await asyncio.to_thread(stack.enter_context, relay_link_released(home))
        yield


def _as_reply(answer: wire.Item | wire.Reply) -> wire.Reply:
    if not isinstance(answer, wire.Reply):
        raise AgentUnavailable("the controller agent answered out of turn")
    return answer
