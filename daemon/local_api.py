"""The daemon's local API server: a Unix socket in the daemon's home.

The protocol (requests, answers, checks) is in :mod:`starmux.local_api`.

Invariants:
- The socket is created 0600 (umask around bind, then chmod and a check), only in a
  directory of ours that others cannot enter; a stale socket is replaced, anything
  else at the path (a file, a link, a live server) is refused, never removed.
- A line longer than ``max_line`` is answered ``too-large`` and the connection
  closed; nothing unbounded is buffered, and a connection that sends nothing within
  ``read_timeout`` is closed.
- A client that goes away while waiting cancels only its *wait*: the checkpoint stays
  pending on the daemon until decided or expired (the handler's contract), and a call
  with the same session and ``key`` joins it instead of raising a second one.
- Only the session itself acts in a session: a checkpoint or cost request whose
  ``token`` is not that session's secret (``authorize``) is refused before the
  handler sees it.
- At most ``waits_per_session`` checkpoint waits per session at once: one session
  (or a process holding its token) cannot take the slots of every other session.
- A handler's :class:`StarmuxError` becomes a ``refused`` answer with its message and
  hint; anything else is logged and answered ``internal``. The server keeps serving.

A client keeps its side open until the answer: EOF (or more bytes) while a checkpoint
waits means it left, so it must not half-close after sending.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from starmux.errors import StarmuxError
from starmux.local_api import (
    _UNIX_PATH_MAX,
    MAX_LINE,
    PROTOCOL_VERSION,
    ArtifactRequest,
    BadRequest,
    CheckpointOutcome,
    CheckpointRequest,
    CostRequest,
    LocalApiError,
    LocalApiHandler,
    Ping,
    Request,
    RequestTooLarge,
    checkpoint_response,
    encode,
    error_response,
    parse_request,
)

log = logging.getLogger("starmux.daemon.api")


def _package_version() -> str:
    try:
        return version("starmux")
    except PackageNotFoundError:  # a source tree without install
        return "0+unknown"


def _check_parent(directory: Path) -> None:
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise LocalApiError(f"cannot use {directory} for the local API: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise LocalApiError(
            f"{directory} is not a directory owned by this user; refusing to put the "
            "local API socket there"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise LocalApiError(
            f"{directory} is accessible by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}); refusing to put the local API socket there",
            hint=f"run: chmod 700 {directory}",
        )


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket nobody listens on; refuse anything else at ``path``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise LocalApiError(
            f"{path} exists and is not a socket; refusing to replace it",
            hint="move it out of the way, then start the daemon again",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: left by a daemon that died
        return
    except OSError as exc:
        raise LocalApiError(f"cannot tell whether {path} is in use: {exc.strerror}") from exc
    finally:
        probe.close()
    raise LocalApiError(
        f"another process is already serving the local API at {path}",
        hint="is another daemon running with this home? see: starmux daemon status",
    )


def _bind_private(path: Path) -> socket.socket:
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise LocalApiError(
            f"the local API socket path is too long for a Unix socket: {path}",
            hint="use a shorter daemon home (STARMUX_HOME)",
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The socket file gets its mode at bind time; with this umask no other user
        # can ever connect, not even in the instant before the chmod below. The umask
        # is process-wide, but for this instant it can only make other files stricter.
        previous = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(previous)
        os.chmod(path, 0o600)
        info = os.lstat(path)
        if (
            not stat.S_ISSOCK(info.st_mode)
            or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) != 0o600
        ):
            raise LocalApiError(f"the local API socket {path} did not come out private (0600)")
    except OSError as exc:
        sock.close()
        raise LocalApiError(f"cannot create the local API socket {path}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


class ArtifactPublisher(Protocol):
    async def publish(self, *, session: str, path: str, name: str | None) -> Any:
        """Publish a copy of ``path`` (UsageError: outside the roots, too large...);
        returns an object with ``id``, ``name``, ``size`` and ``digest``."""
        ...


class _ClientGone(Exception):
    """The client closed (or wrote more) while its request was being answered."""


class LocalApiServer:
    def __init__(
        self,
        path: Path,
        handler: LocalApiHandler,
        *,
        max_line: int = MAX_LINE,
        authorize: Callable[[str, str], bool],
        max_connections: int = 256,
        waits_per_session: int = 16,
        read_timeout: float = 10.0,
        artifacts: ArtifactPublisher | None = None,
    ) -> None:
        self._artifacts = artifacts
        self._authorize = authorize
        self._waits_per_session = waits_per_session
        self._waits: collections.Counter[str] = collections.Counter()
        if not 0 < max_line <= MAX_LINE:
            raise ValueError(f"max_line must be 1..{MAX_LINE}")
        self.path = path
        self._handler = handler
        self._max_line = max_line
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._version = _package_version()
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the local API server is already started")
        _check_parent(self.path.parent)
        _clear_stale_socket(self.path)
        sock = _bind_private(self.path)
        info = os.lstat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        try:
            self._server = await asyncio.start_unix_server(
                self._connection, sock=sock, limit=self._max_line
            )
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("local API listening on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, cancel waits in progress (checkpoints stay), remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        # Only the socket we bound: a newer daemon may have replaced it already.
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()
        self._inode = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        busy = len(self._connections) > self._max_connections
        try:
            response = await self._answer(reader, busy=busy)
            if response is not None:
                writer.write(encode(response))
                await writer.drain()
        except (_ClientGone, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels a connection task. End it quietly: the stream
            # machinery of Python 3.11 logs a cancelled connection task as an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, *, busy: bool) -> dict[str, Any] | None:
        # The request is read even when busy: closing a Unix socket with unread data
        # resets it, and the client would lose our answer.
        try:
            async with asyncio.timeout(self._read_timeout):
                line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return error_response(
                RequestTooLarge.code, f"request line is longer than {self._max_line} bytes"
            )
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None  # connected and left: nothing to answer
            return error_response(BadRequest.code, "request line does not end with a newline")
        except TimeoutError:
            return error_response(BadRequest.code, "no request line within the read timeout")
        if busy:
            return error_response(
                "busy", "too many connections to the local API", "try again in a moment"
            )
        try:
            request = parse_request(line[:-1])
        except BadRequest as exc:
            return error_response(exc.code, exc.message, exc.hint)
        return await self._dispatch(request, reader)

    async def _dispatch(self, request: Request, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            if isinstance(request, Ping):
                return {"ok": True, "version": self._version, "protocol": PROTOCOL_VERSION}
            if not self._authorize(request.session, request.token):
                return error_response(
                    "refused",
                    f"not the token of session {request.session}",
                    "only the session itself may use it: run this inside the session "
                    "(STARMUX_SESSION_TOKEN comes from its environment)",
                )
            if isinstance(request, ArtifactRequest):
                if self._artifacts is None:
                    return error_response("refused", "this daemon does not take artifacts")
                published = await self._artifacts.publish(
                    session=request.session, path=request.path, name=request.name
                )
                return {
                    "ok": True,
                    "artifact": published.id,
                    "name": published.name,
                    "size": published.size,
                    "digest": published.digest.hex(),
                }
            if isinstance(request, CostRequest):
                await self._handler.cost(
                    session=request.session,
                    input_tokens=request.input_tokens,
                    output_tokens=request.output_tokens,
                    usd=request.usd,
                    note=request.note,
                )
                return {"ok": True}
            if self._waits[request.session] >= self._waits_per_session:
                return error_response(
                    "busy",
                    f"{self._waits_per_session} checkpoints already wait in this session",
                    "answer or let some expire first",
                )
            self._waits[request.session] += 1
            try:
                outcome = await self._wait_for_decision(request, reader)
            finally:
                self._waits[request.session] -= 1
                if not self._waits[request.session]:
                    del self._waits[request.session]
            return checkpoint_response(request, outcome)
        except StarmuxError as exc:
            return error_response("refused", exc.message, exc.hint)
        except _ClientGone:
            raise
        except Exception:
            log.exception("local API handler failed on %s", type(request).__name__)
            return error_response(
                "internal", "internal error in the daemon", "see the daemon's log"
            )

    async def _wait_for_decision(
        self, request: CheckpointRequest, reader: asyncio.StreamReader
    ) -> CheckpointOutcome:
        call = asyncio.ensure_future(
            self._handler.checkpoint(
                session=request.session,
                title=request.title,
                body=request.body,
                timeout=request.timeout,
                default_approve=request.default_approve,
                key=request.key,
                preview=request.preview,
            )
        )
        # Anything readable now is EOF (the client left) or a second request (not
        # allowed): either way nobody will read our answer, so stop waiting.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
            if call.done():
                return call.result()
            raise _ClientGone()
        finally:
            call.cancel()
            gone.cancel()
            # Collects both (no "exception never retrieved"); our own cancellation,
            # if that is why we are here, still propagates through gather().
            await asyncio.gather(call, gone, return_exceptions=True)
