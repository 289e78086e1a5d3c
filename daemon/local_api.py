"""The daemon's local API: an agent inside a session asks for a checkpoint or reports cost.

Wire: a Unix socket in the daemon's home, one JSON object per line (UTF-8), one
request and one response per connection. Every peer is a process of the same user,
yet every field is checked as if it were hostile: types exactly (``true`` is not a
number), sizes, ranges, no unknown or duplicate fields, no NaN, no lone surrogates.

Requests::

    {"op": "ping"}
    {"op": "checkpoint", "session": S, "title": T, "body": B, "timeout": SECONDS,
     "default": "deny" | "approve", "key": K}              body, default, key optional
    {"op": "cost", "session": S, "input_tokens": N, "output_tokens": N, "usd": X,
     "note": T}                                             note optional

Responses: ``{"ok": true, ...}`` or ``{"ok": false, "code": C, "error": E, "hint": H}``
with ``code`` one of ``bad-request``, ``too-large``, ``unknown-op``, ``refused`` (the
handler said no: unknown session...), ``busy`` or ``internal``. A checkpoint answers
``{"ok": true, "checkpoint": ID, "decision": "approved" | "denied" | "expired",
"approved": BOOL, "default": "deny" | "approve", "reason": R, "decided_by": FP}``;
``approved`` is the verdict in force, so on expiry it is the default that applied.

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
- A handler's :class:`StarmuxError` becomes a ``refused`` answer with its message and
  hint; anything else is logged and answered ``internal``. The server keeps serving.

A client keeps its side open until the answer: EOF (or more bytes) while a checkpoint
waits means it left, so it must not half-close after sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import stat
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from starmux.errors import RemoteProtocolError, StarmuxError

log = logging.getLogger("starmux.daemon.api")

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024  # bytes of one request line, newline excluded
MAX_TITLE = 200  # characters
MAX_BODY = 16 * 1024  # bytes of UTF-8
MAX_NOTE = 1024  # characters
MIN_TIMEOUT = 1.0
MAX_TIMEOUT = 86400.0
MAX_TOKENS = 2**53  # exact in every JSON reader
MAX_USD = 1e9
DECISIONS = frozenset({"approved", "denied", "expired"})

_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with the terminating NUL


class LocalApiError(StarmuxError):
    """The local API socket cannot be set up (path, permissions, another server)."""


class BadRequest(RemoteProtocolError):
    """A request line that breaks the protocol; ``code`` goes on the wire."""

    code = "bad-request"


class RequestTooLarge(BadRequest):
    code = "too-large"


class UnknownOp(BadRequest):
    code = "unknown-op"


# --- the handler: what the daemon behind the API must provide ----------------------------


@dataclass(frozen=True)
class CheckpointOutcome:
    checkpoint_id: str
    decision: str  # "approved" | "denied" | "expired"
    reason: str
    decided_by: str  # the deciding controller's fingerprint; "" when it expired


class LocalApiHandler(Protocol):
    async def checkpoint(
        self,
        *,
        session: str,
        title: str,
        body: str,
        timeout: float,  # noqa: ASYNC109 - the checkpoint's expiry, not this call's deadline
        default_approve: bool,
        key: str | None,
    ) -> CheckpointOutcome:
        """Raise the checkpoint (or join the one with this session and key) and wait.

        Cancelling this call cancels the wait only; the checkpoint stays pending.
        Raise :class:`~starmux.errors.UsageError` for e.g. an unknown session.
        """
        ...

    async def cost(
        self, *, session: str, input_tokens: int, output_tokens: int, usd: float, note: str
    ) -> None: ...


# --- sans-I/O: request lines in, typed requests out; responses to bytes ----------------


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class CheckpointRequest:
    session: str
    title: str
    body: str
    timeout: float
    default_approve: bool
    key: str | None


@dataclass(frozen=True)
class CostRequest:
    session: str
    input_tokens: int
    output_tokens: int
    usd: float
    note: str


Request = Ping | CheckpointRequest | CostRequest


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid Unicode (lone surrogate)") from None
    if "\0" in value:
        raise BadRequest(f"{name} contains a NUL character")
    return value


def check_session(value: object) -> str:
    if not isinstance(value, str) or not _SESSION.fullmatch(value):
        raise BadRequest("session must be 1-64 letters, digits, '-' or '_'")
    return value


def check_title(value: object) -> str:
    title = _text("title", value)
    if not 1 <= len(title) <= MAX_TITLE:
        raise BadRequest(f"title must be 1-{MAX_TITLE} characters (got {len(title)})")
    # One line, and nothing that rewrites how the line looks (bidi overrides are Cf).
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in title):
        raise BadRequest("title must be one line without control or format characters")
    return title


def check_body(value: object) -> str:
    body = _text("body", value)
    if len(body.encode("utf-8")) > MAX_BODY:
        raise BadRequest(f"body must be at most {MAX_BODY} bytes of UTF-8")
    return body


def check_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("timeout must be a number of seconds")
    if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:  # also refuses NaN
        raise BadRequest(f"timeout must be {MIN_TIMEOUT:g}-{MAX_TIMEOUT:g} seconds")
    return float(value)


def _default(value: object) -> bool:
    if value not in ("deny", "approve"):
        raise BadRequest('default must be "deny" or "approve"')
    return value == "approve"


def check_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise BadRequest("key must be 1-128 printable ASCII characters without spaces")
    return value


def _tokens(name: str) -> Callable[[object], int]:
    def check(value: object) -> int:
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            raise BadRequest(f"{name} must be a whole number >= 0")
        return value

    return check


def _usd(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("usd must be a number")
    if not 0 <= value <= MAX_USD:
        raise BadRequest("usd must be a finite amount >= 0")
    return float(value)


def _note(value: object) -> str:
    note = _text("note", value)
    if len(note) > MAX_NOTE:
        raise BadRequest(f"note must be at most {MAX_NOTE} characters")
    return note


_REQUIRED = object()
_Fields = dict[str, tuple[Callable[[object], Any], object]]

#: op → (request class, field → (check, value when absent)); the whole grammar. Wire
#: names are the class's field names, except ``default`` → ``default_approve``.
_OPS: dict[str, tuple[Callable[..., Request], _Fields]] = {
    "ping": (Ping, {}),
    "checkpoint": (
        CheckpointRequest,
        {
            "session": (check_session, _REQUIRED),
            "title": (check_title, _REQUIRED),
            "body": (check_body, ""),
            "timeout": (check_timeout, _REQUIRED),
            "default": (_default, False),
            "key": (check_key, None),
        },
    ),
    "cost": (
        CostRequest,
        {
            "session": (check_session, _REQUIRED),
            "input_tokens": (_tokens("input_tokens"), _REQUIRED),
            "output_tokens": (_tokens("output_tokens"), _REQUIRED),
            "usd": (_usd, _REQUIRED),
            "note": (_note, ""),
        },
    ),
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise BadRequest("a field appears twice")
    return fields


def _finite(text: str) -> float:
    value = float(text)  # also NaN, Infinity: parse_constant gets those by name
    if not math.isfinite(value):
        raise BadRequest(f"numbers must be finite, not {text[:20]}")
    return value


def parse_request(line: bytes) -> Request:
    """One request line (without its newline) → a request; raises :class:`BadRequest`."""
    if len(line) > MAX_LINE:
        raise RequestTooLarge(f"request line is longer than {MAX_LINE} bytes")
    try:
        message = json.loads(
            line.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_finite,
            parse_constant=_finite,
        )
    except BadRequest:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert.
        raise BadRequest("request is not one JSON object on one line of UTF-8") from exc
    if not isinstance(message, dict):
        raise BadRequest("request must be a JSON object")
    op = message.pop("op", None)
    if not isinstance(op, str):
        raise BadRequest('request needs an "op" string', hint='try {"op": "ping"}')
    if op not in _OPS:
        raise UnknownOp(f"unknown op {op[:40]!r}", hint="ops: " + ", ".join(sorted(_OPS)))
    make, fields = _OPS[op]
    unknown = sorted(set(message) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r} for op {op!r}")
    values: dict[str, Any] = {}
    for name, (check, absent) in fields.items():
        if name in message:
            values[name] = check(message[name])
        elif absent is _REQUIRED:
            raise BadRequest(f"op {op!r} needs the field {name!r}")
        else:
            values[name] = absent
    if "default" in values:
        values["default_approve"] = values.pop("default")
    return make(**values)


def encode(message: dict[str, Any]) -> bytes:
    """One response (or request) object → one line of ASCII (any text survives escaping)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def error_response(code: str, error: str, hint: str | None = None) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error, "hint": hint or ""}


def checkpoint_response(request: CheckpointRequest, outcome: CheckpointOutcome) -> dict[str, Any]:
    if outcome.decision not in DECISIONS or not all(
        isinstance(v, str) for v in (outcome.checkpoint_id, outcome.reason, outcome.decided_by)
    ):
        raise TypeError(f"the checkpoint handler returned an invalid outcome: {outcome!r}")
    approved = outcome.decision == "approved" or (
        outcome.decision == "expired" and request.default_approve
    )
    return {
        "ok": True,
        "checkpoint": outcome.checkpoint_id,
        "decision": outcome.decision,
        "approved": approved,
        "default": "approve" if request.default_approve else "deny",
        "reason": outcome.reason,
        "decided_by": outcome.decided_by,
    }


# --- the socket: a thin adapter that moves lines and calls the handler -------------------


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


class _ClientGone(Exception):
    """The client closed (or wrote more) while its request was being answered."""


class LocalApiServer:
    def __init__(
        self,
        path: Path,
        handler: LocalApiHandler,
        *,
        max_line: int = MAX_LINE,
        max_connections: int = 64,
        read_timeout: float = 10.0,
    ) -> None:
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
            if isinstance(request, CostRequest):
                await self._handler.cost(
                    session=request.session,
                    input_tokens=request.input_tokens,
                    output_tokens=request.output_tokens,
                    usd=request.usd,
                    note=request.note,
                )
                return {"ok": True}
            outcome = await self._wait_for_decision(request, reader)
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
