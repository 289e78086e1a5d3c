"""The controller agent's local protocol: requests, replies and stream items (no I/O).

One controller agent per controller home holds the device's relay connection, its
channels, cache and outbox; the CLI commands are thin clients of it over a Unix
socket in the home (0600). This module is the whole grammar, shared by the agent
(:mod:`starmux.client.agent`) and the commands (:mod:`starmux.client.agent_client`).

Wire: one JSON object per line (UTF-8, ASCII-escaped when we write it). A client
sends exactly one request line; the agent answers with zero or more **stream items**
and then exactly one **final reply**, then closes::

    → {"v": 1, "op": "decide", "checkpoint": "c-1f2e", "approve": true, "reason": ""}
    ← {"v": 1, "ok": true, ...}                                     final reply
    ← {"v": 1, "ok": false, "code": C, "error": E, "hint": H}       final reply (failure)
    ← {"v": 1, "item": "output", "seq": N, "stream": "stdout", "data": B64}  (watch, logs)
    ← {"v": 1, "item": "status", "seq": N, "status": S, "exit_code": N, "reason": R}
    ← {"v": 1, "item": "notice", "text": T}                         stream item
    ← {"v": 1, "item": "progress", "done": N, "total": N}            (get: bytes so far)
    ← {"v": 1, "item": "task", "task": {...}, "event": {...}}        (tasks --watch)

Invariants:
- A request is checked field by field (exact types, sizes, no unknown or duplicate
  fields, no NaN), and a request of another version is refused with ``code``
  ``version`` rather than guessed at: an agent left running across an upgrade tells
  the command to restart it (the hint says how).
- Every line is size-checked before it is parsed, in both directions: a request line
  at most :data:`MAX_REQUEST` bytes, a reply line at most :data:`MAX_REPLY` bytes.
- Replies carry text that came from machines (titles, errors, statuses). It is data
  here; whoever prints it escapes it (:func:`starmux.client.terminal.printable`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from starmux.errors import RemoteProtocolError

from .json_lines import parse_object

PROTOCOL_VERSION: Final = 1
SOCKET_FILE: Final = "controller.sock"
MAX_REQUEST: Final = 256 * 1024  # run carries argv and env
MAX_REPLY: Final = 8 * 1024 * 1024  # a listing of many sessions
MAX_OUTPUT_ITEM: Final = 64 * 1024  # bytes of output in one stream item (before base64)
MAX_TEXT: Final = 4096
MAX_ARGS: Final = 1024

#: Ids the controller makes (session "s-…", command "k-…") and machines make
#: (checkpoints); anything else is refused before it reaches the cache.
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,80}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CODES: Final = frozenset(
    {"bad-request", "version", "not-found", "refused", "too-late", "unavailable", "internal"}
)


class AgentProtocolError(RemoteProtocolError):
    """A line that breaks the controller agent's protocol; ``code`` goes on the wire."""

    code = "bad-request"


class VersionMismatch(AgentProtocolError):
    code = "version"


@dataclass(frozen=True)
class Request:
    op: str
    fields: dict[str, Any] = field(default_factory=dict)


# --- field checks ----------------------------------------------------------------------


def _text(limit: int = MAX_TEXT, *, allow_empty: bool = True) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise AgentProtocolError("expected a string")
        if len(value) > limit or (not allow_empty and not value):
            raise AgentProtocolError(f"a string must be {int(not allow_empty)}-{limit} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise AgentProtocolError("a string is not valid Unicode") from None
        if "\0" in value:
            raise AgentProtocolError("a string contains a NUL character")
        return value

    return check


def check_id(value: object) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise AgentProtocolError("an id must be 1-80 letters, digits or - _ . :")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise AgentProtocolError("expected true or false")
    return value


def _seq(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise AgentProtocolError("a seq must be a whole number >= 0")
    return value


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    def optional(value: object) -> Any:
        return None if value is None else check(value)

    return optional


def _argv(value: object) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ARGS:
        raise AgentProtocolError(f"argv must be a list of 1-{MAX_ARGS} strings")
    word = _text(allow_empty=True)
    return [word(arg) for arg in value]


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ARGS:
        raise AgentProtocolError("env must be an object of names to strings")
    word = _text()
    for name in value:
        if not _ENV_NAME.fullmatch(name):
            raise AgentProtocolError(f"{name[:40]!r} is not an environment variable name")
    return {name: word(text) for name, text in value.items()}


def _words(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ARGS:
        raise AgentProtocolError(f"expected a list of at most {MAX_ARGS} strings")
    word = _text(80, allow_empty=False)
    return [word(item) for item in value]


def _fraction(value: object) -> float:
    if type(value) not in (int, float) or not 0 < float(value) < 1:  # type: ignore[arg-type]
        raise AgentProtocolError("expected a number between 0 and 1")
    return float(value)  # type: ignore[arg-type]


MAX_ATTACHMENTS = 64


def _absolute_path(value: object) -> str:
    path = _text(MAX_TEXT, allow_empty=False)(value)
    if not path.startswith("/"):
        raise AgentProtocolError("a path must be absolute")
    return path


def _paths(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise AgentProtocolError(f"attachments must be a list of at most {MAX_ATTACHMENTS} paths")
    return [_absolute_path(path) for path in value]


def _int(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if type(value) is not int or not low <= value <= high:
            raise AgentProtocolError(f"expected a whole number {low}..{high}")
        return value

    return check


def _duration(value: object) -> float:
    """Seconds: finite, positive, at most a year (as the task core allows)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AgentProtocolError("a duration must be a number of seconds")
    if not 0 < value <= 366 * 24 * 3600:  # NaN and inf never parse (json_lines)
        raise AgentProtocolError("a duration must be 0 < seconds <= one year")
    return float(value)


def _tags(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > 32:
        raise AgentProtocolError("tags must be a list of at most 32 strings")
    word = _text(100, allow_empty=False)
    return [word(tag) for tag in value]


def _task_id(value: object) -> str:
    """Empty (the agent makes one) or an id a machine accepts (room left for ``-N``)."""
    if value == "":
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,58}", value):
        raise AgentProtocolError("a task id must be 1-58 letters, digits, - or _")
    return value


_REQUIRED = object()
_Fields = dict[str, tuple[Callable[[object], Any], object]]

#: op → field → (check, value when absent): the whole request grammar.
OPS: Final[dict[str, _Fields]] = {
    "ping": {},
    "status": {},
    "stop": {},
    "machines": {},
    "sessions": {"machine": (_optional(_text(200, allow_empty=False)), None)},
    "approvals": {},
    "outbox": {},
    # ``after``: the last event seq the command already printed (a watch resuming
    # after the agent restarted); items carry the seq of their event.
    "logs": {"session": (check_id, _REQUIRED), "after": (_seq, 0)},
    "watch": {"session": (check_id, _REQUIRED), "after": (_seq, 0)},
    "run": {
        "machine": (_text(200, allow_empty=False), _REQUIRED),
        "argv": (_argv, _REQUIRED),
        "cwd": (_text(), "~"),
        "title": (_text(200), ""),
        "env": (_env, {}),
        "pty": (_bool, False),
        "attachments": (_paths, []),
    },
    "artifacts": {"session": (check_id, _REQUIRED)},
    # ``output``: where the file goes (the command made it absolute); an existing
    # folder gets the artifact's name inside it.
    "get": {
        "artifact": (check_id, _REQUIRED),
        "output": (_absolute_path, _REQUIRED),
        "force": (_bool, False),
    },
    "cancel": {"session": (check_id, _REQUIRED)},
    # Tasks (issue 18): placed by the agent on machines by tags or on one machine.
    "submit": {
        "argv": (_argv, _REQUIRED),
        "target": (_text(1000), ""),
        "machine": (_text(200), ""),
        "count": (_int(1, 1000), 1),
        "priority": (_int(-1000, 1000), 0),
        "strategy": (_text(20, allow_empty=False), "least-loaded"),
        "schedule_to_start": (_optional(_duration), None),
        "start_to_close": (_optional(_duration), None),
        "heartbeat": (_optional(_duration), 60.0),
        "assign_ack": (_optional(_duration), 30.0),
        "retry_on_lost": (_bool, False),
        "id": (_task_id, ""),
        "cwd": (_text(), "~"),
        "title": (_text(200), ""),
        "env": (_env, {}),
        "pty": (_bool, False),
    },
    # follow: stream the listed tasks, then each transition, until all ended (--watch)
    "tasks": {"state": (_text(30), ""), "follow": (_bool, False)},
    "task": {"task": (check_id, _REQUIRED)},
    "tag": {
        "machine": (_text(200, allow_empty=False), _REQUIRED),
        "add": (_tags, []),
        "remove": (_tags, []),
    },
    "decide": {
        "checkpoint": (check_id, _REQUIRED),
        "approve": (_bool, _REQUIRED),
        "reason": (_text(1000), ""),
        # Review (issue 19): also set a rule for the rest of the session.
        "for_session": (_bool, False),
        "rule": (_optional(_text(1024, allow_empty=False)), None),
    },
    "approval": {"checkpoint": (check_id, _REQUIRED)},
    "rules": {"session": (check_id, _REQUIRED)},
    "remove-rule": {"rule": (check_id, _REQUIRED)},
    "diff": {"session": (check_id, _REQUIRED), "stat": (_bool, False)},
    "revoke": {"machine": (_text(200, allow_empty=False), _REQUIRED)},
    "rename": {
        "machine": (_text(200, allow_empty=False), _REQUIRED),
        "name": (_text(64, allow_empty=False), _REQUIRED),
    },
    # Notifications (client/notify_actions.py): targets go to every machine unless
    # ``machine`` names one.
    "notify-target": {
        "kind": (_text(16, allow_empty=False), _REQUIRED),
        "url": (_text(2048), ""),
        "content": (_text(16, allow_empty=False), "none"),
        "machine": (_optional(_text(200, allow_empty=False)), None),
    },
    "notify-list": {},
    "notify-remove": {"target": (check_id, _REQUIRED)},
    "notify-test": {"target": (_text(80), "")},
    "notify-settings": {
        "kinds": (_words, []),
        "reminder": (_fraction, 0.75),
        "machine": (_optional(_text(200, allow_empty=False)), None),
    },
    # Hold the relay connection free while this request's connection stays open (e.g.
    # `pair` runs its own link: a second link with the same key would close ours).
    "release-link": {},
}


def _object(line: bytes, limit: int) -> dict[str, Any]:
    message = parse_object(line, limit=limit, error=AgentProtocolError)
    version = message.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {str(version)[:10]} is not {PROTOCOL_VERSION}",
            hint="the controller agent and this command come from different starmux "
            "versions: run `starmux controller stop` (the next command starts it again)",
        )
    return message


def parse_request(line: bytes) -> Request:
    """One request line (without its newline) → a :class:`Request`."""
    message = _object(line, MAX_REQUEST)
    op = message.pop("op", None)
    if not isinstance(op, str) or op not in OPS:
        raise AgentProtocolError(f"unknown op {str(op)[:40]!r}")
    fields = OPS[op]
    unknown = sorted(set(message) - set(fields))
    if unknown:
        raise AgentProtocolError(f"unknown field {unknown[0][:40]!r} for op {op!r}")
    values: dict[str, Any] = {}
    for name, (check, absent) in fields.items():
        if name in message:
            values[name] = check(message[name])
        elif absent is _REQUIRED:
            raise AgentProtocolError(f"op {op!r} needs the field {name!r}")
        else:
            values[name] = absent
    return Request(op, values)


def encode_request(op: str, **fields: Any) -> bytes:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    line = encode({"op": op, **fields})
    if len(line) > MAX_REQUEST:
        raise AgentProtocolError(f"the request is larger than {MAX_REQUEST} bytes")
    return line


# --- replies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """The final reply: ``ok`` with its fields, or a failure with code, error, hint."""

    ok: bool
    fields: dict[str, Any]
    code: str = ""
    error: str = ""
    hint: str = ""


@dataclass(frozen=True)
class Item:
    """A stream item before the final reply (watch, logs)."""

    kind: str  # "output" | "status" | "notice" | "progress" | "task"
    fields: dict[str, Any]


def encode(message: dict[str, Any]) -> bytes:
    """One object → one line of ASCII (any text survives escaping)."""
    return (
        json.dumps({"v": PROTOCOL_VERSION, **message}, separators=(",", ":"), allow_nan=False)
        .encode("ascii")
        .rstrip()
        + b"\n"
    )


def ok(**fields: Any) -> bytes:
    return encode({"ok": True, **fields})


def failure(code: str, error: str, hint: str = "") -> bytes:
    if code not in CODES:
        raise ValueError(f"unknown failure code {code!r}")
    return encode({"ok": False, "code": code, "error": error, "hint": hint})


def output_item(seq: int, stream: str, data: bytes) -> bytes:
    if stream not in ("stdout", "stderr") or len(data) > MAX_OUTPUT_ITEM:
        raise ValueError("output items carry stdout or stderr, at most MAX_OUTPUT_ITEM bytes")
    data_text = base64.b64encode(data).decode()
    return encode({"item": "output", "seq": seq, "stream": stream, "data": data_text})


def status_item(seq: int, status: str, exit_code: int | None, reason: str = "") -> bytes:
    return encode(
        {"item": "status", "seq": seq, "status": status, "exit_code": exit_code, "reason": reason}
    )


def notice_item(text: str) -> bytes:
    return encode({"item": "notice", "text": text})


def progress_item(done: int, total: int) -> bytes:
    return encode({"item": "progress", "done": done, "total": total})


def task_item(task: dict[str, Any], event: dict[str, Any] | None = None) -> bytes:
    """A task as ``tasks`` shows it and, after the first, the transition it just took."""
    return encode({"item": "task", "task": task, "event": event})


def parse_reply(line: bytes) -> Reply | Item:
    """One line from the agent → a final :class:`Reply` or a stream :class:`Item`."""
    message = _object(line, MAX_REPLY)
    if "item" in message:
        kind = message.pop("item")
        seq = message.get("seq", 0)
        if kind in ("output", "status") and (type(seq) is not int or seq < 0):
            raise AgentProtocolError("an item's seq must be a whole number >= 0")
        if kind == "output":
            stream, data = message.get("stream"), message.get("data")
            if stream not in ("stdout", "stderr") or not isinstance(data, str):
                raise AgentProtocolError("an output item needs stream and data")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise AgentProtocolError("output data is not base64") from exc
            return Item("output", {"seq": seq, "stream": stream, "data": raw})
        if kind == "status":
            status, code = message.get("status"), message.get("exit_code")
            if not isinstance(status, str) or not (code is None or type(code) is int):
                raise AgentProtocolError("a status item needs a status and an exit code")
            reason = message.get("reason", "")
            if not isinstance(reason, str):
                raise AgentProtocolError("a status item's reason must be a string")
            fields = {"seq": seq, "status": status, "exit_code": code, "reason": reason}
            return Item("status", fields)
        if kind == "progress":
            done, total = message.get("done"), message.get("total")
            if type(done) is not int or type(total) is not int or not 0 <= done <= total:
                raise AgentProtocolError("a progress item needs done <= total")
            return Item("progress", {"done": done, "total": total})
        if kind == "task":
            task, event = message.get("task"), message.get("event")
            if not isinstance(task, dict) or not (event is None or isinstance(event, dict)):
                raise AgentProtocolError("a task item needs a task and, if any, an event")
            return Item("task", {"task": task, "event": event})
        if kind == "notice":
            text = message.get("text")
            if not isinstance(text, str):
                raise AgentProtocolError("a notice item needs text")
            return Item("notice", {"text": text})
        raise AgentProtocolError(f"unknown stream item {str(kind)[:40]!r}")
    answer = message.pop("ok", None)
    if answer is True:
        return Reply(True, message)
    if answer is False:
        code, error, hint = message.get("code"), message.get("error"), message.get("hint", "")
        if code not in CODES or not isinstance(error, str) or not isinstance(hint, str):
            raise AgentProtocolError("a failure needs a known code, an error and a hint")
        return Reply(False, {}, code, error, hint)
    raise AgentProtocolError('a reply needs "ok" or "item"')
