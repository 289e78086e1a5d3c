"""The daemon's local API protocol: requests, answers and their checks (no I/O).

Shared by the server (:mod:`daemon.local_api`) and the agent-side commands
(``starmux checkpoint``, ``starmux cost``, the Claude hook), which must not pay
for importing the server (asyncio and sockets) on every call.
The daemon's local API: an agent inside a session asks for a checkpoint or reports cost.

Wire: a Unix socket in the daemon's home, one JSON object per line (UTF-8), one
request and one response per connection. Every peer is a process of the same user,
yet every field is checked as if it were hostile: types exactly (``true`` is not a
number), sizes, ranges, no unknown or duplicate fields, no NaN, no lone surrogates.

Requests::

    {"op": "ping"}
    {"op": "checkpoint", "session": S, "token": K, "title": T, "body": B,
     "timeout": SECONDS, "default": "deny" | "approve", "key": K, "preview": P}
                                          body, default, key, preview optional
    P = {"type": "command" | "diff" | "text", "tool": T, "subject": S, "cwd": C,
         "text": X}              (starmux.checkpoint_preview: capped, typed)
    {"op": "cost", "session": S, "token": K, "input_tokens": N, "output_tokens": N,
     "usd": X, "note": T}                                   note optional
    {"op": "artifact", "session": S, "token": K, "path": P, "name": N}
                                                            name optional

``token`` is the session's own secret (``STARMUX_SESSION_TOKEN``, given only to that
session's process): any process of the daemon's user can reach the socket, but only
the session itself can raise a checkpoint or report a cost in it. The server checks
it in constant time before the handler sees the request.

Responses: ``{"ok": true, ...}`` or ``{"ok": false, "code": C, "error": E, "hint": H}``
with ``code`` one of ``bad-request``, ``too-large``, ``unknown-op``, ``refused`` (the
handler said no: unknown session...), ``busy`` or ``internal``. A checkpoint answers
``{"ok": true, "checkpoint": ID, "decision": "approved" | "denied" | "expired",
"approved": BOOL, "default": "deny" | "approve", "reason": R, "decided_by": FP}``;
``approved`` is the verdict in force, so on expiry it is the default that applied.
An artifact answers ``{"ok": true, "artifact": ID, "name": N, "size": BYTES,
"digest": HEX}`` (``path`` must be an absolute path inside the daemon's allowed
roots; the daemon publishes a copy).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starmux.errors import RemoteProtocolError, StarmuxError

from . import checkpoint_preview
from .checkpoint_preview import CheckpointPreview
from .json_lines import parse_object

PROTOCOL_VERSION = 1
#: Bytes of one request line, newline excluded: a 16 KiB body and a 24 KiB preview,
#: ASCII-escaped (a non-ASCII character can take 12 bytes as a surrogate pair).
MAX_LINE = 512 * 1024
MAX_TITLE = 200  # characters
MAX_BODY = 16 * 1024  # bytes of UTF-8
MAX_NOTE = 1024  # characters
MIN_TIMEOUT = 1.0
MAX_TIMEOUT = 86400.0
MAX_TOKENS = 2**53  # exact in every JSON reader
MAX_USD = 1e9
DECISIONS = frozenset({"approved", "denied", "expired"})

_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
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
        preview: CheckpointPreview | None = None,
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
    token: str
    title: str
    body: str
    timeout: float
    default_approve: bool
    key: str | None
    preview: CheckpointPreview | None


@dataclass(frozen=True)
class CostRequest:
    session: str
    token: str
    input_tokens: int
    output_tokens: int
    usd: float
    note: str


@dataclass(frozen=True)
class ArtifactRequest:
    session: str
    token: str
    path: str
    name: str | None


Request = Ping | CheckpointRequest | CostRequest | ArtifactRequest
MAX_PATH = 4096


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


def check_token(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise BadRequest("token must be the session's STARMUX_SESSION_TOKEN")
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


def check_preview(value: object) -> CheckpointPreview | None:
    if value is None:
        return None
    try:
        return checkpoint_preview.from_json(value)
    except StarmuxError as exc:
        raise BadRequest(f"invalid preview: {exc.message}") from None


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


def _path(value: object) -> str:
    path = _text("path", value)
    if not path.startswith("/") or len(path.encode("utf-8")) > MAX_PATH:
        raise BadRequest(f"path must be absolute and at most {MAX_PATH} bytes")
    return path


def _name(value: object) -> str | None:
    if value is None:
        return None
    name = _text("name", value)
    if not 1 <= len(name) <= 255:
        raise BadRequest("name must be 1-255 characters")
    return name


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
            "preview": (check_preview, None),
            "token": (check_token, _REQUIRED),
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
            "token": (check_token, _REQUIRED),
        },
    ),
    "artifact": (
        ArtifactRequest,
        {
            "session": (check_session, _REQUIRED),
            "path": (_path, _REQUIRED),
            "name": (_name, None),
            "token": (check_token, _REQUIRED),
        },
    ),
}


def parse_request(line: bytes) -> Request:
    """One request line (without its newline) → a request; raises :class:`BadRequest`."""
    message = parse_object(line, limit=MAX_LINE, error=BadRequest, too_large=RequestTooLarge)
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
