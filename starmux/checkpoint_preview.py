"""What a checkpoint would do, shown before anyone approves it: a typed preview.

A preview is one of three kinds (:class:`PreviewKind`)::

    command  the shell command a tool would run, with its working directory
    diff     a unified diff of the file edit a tool would make (computed on the
             machine, against the file as it is now)
    text     anything else, as plain text

Invariants:
- A preview travels inside ``checkpoint-raised`` (section 5.3 of PROTOCOL.md), so
  its ``text`` is capped at :data:`MAX_PREVIEW` bytes of UTF-8; ``full_size`` says
  how large it was before the cut, so every reader can say that the cap was hit.
- A preview from a machine is hostile data like every other string it sends: the
  checks here bound sizes; whoever prints it escapes it.
- Everything here is pure (no file, clock or terminal): the Claude hook reads the
  file and hands its text in; :func:`unified_diff` and :func:`apply_edits` only
  transform strings.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .codec import Message
from .errors import UsageError

#: Bytes of UTF-8 in a preview's text: with a 16 KiB body and the title, one
#: ``checkpoint-raised`` still fits one event page (48 KiB).
MAX_PREVIEW = 24 * 1024
MAX_TOOL = 64  # characters of a tool name
MAX_SUBJECT = 4096  # characters of a command or path
MAX_CWD = 4096


class PreviewKind(enum.StrEnum):
    COMMAND = "command"
    DIFF = "diff"
    TEXT = "text"


@dataclass(frozen=True)
class CheckpointPreview(Message):
    """Nested in ``checkpoint-raised``: what the checkpoint would let happen.

    ``tool``: the agent's tool name (``Bash``, ``Edit``...), empty if none;
    ``subject``: the command (type command) or the file path (type diff), what
    approval rules match against; ``text``: the command, the diff or the text, cut
    to :data:`MAX_PREVIEW` bytes; ``full_size``: its size in bytes before the cut."""

    KIND = "checkpoint-preview"
    type: PreviewKind
    tool: str
    subject: str
    cwd: str
    text: str
    full_size: int

    def __post_init__(self) -> None:
        if self.type not in PreviewKind._value2member_map_:
            raise UsageError(f"invalid preview type {str(self.type)[:40]!r}")
        if len(self.tool) > MAX_TOOL or len(self.subject) > MAX_SUBJECT or len(self.cwd) > MAX_CWD:
            raise UsageError("a preview's tool, subject or cwd is too long")
        size = utf8_size(self.text)
        if size > MAX_PREVIEW:
            raise UsageError(f"a preview's text must be at most {MAX_PREVIEW} bytes")
        if not size <= self.full_size < 2**53:
            raise UsageError("a preview's full_size must be at least its text's size")

    @property
    def truncated(self) -> bool:
        return self.full_size > utf8_size(self.text)

    def cap_note(self) -> str:
        """What a reader is told when the cap was hit ("" when it was not)."""
        if not self.truncated:
            return ""
        return (
            f"preview cut at {_size(MAX_PREVIEW)}: the whole is {_size(self.full_size)} "
            "(see the file on the machine)"
        )


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8; a lone surrogate (no valid UTF-8) is refused."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError("text is not valid Unicode (lone surrogate)") from None


def _size(count: int) -> str:
    return f"{count / 1024:.0f} KiB" if count >= 1024 else f"{count} bytes"


def capped(text: str, limit: int = MAX_PREVIEW) -> tuple[str, int]:
    """``text`` cut to ``limit`` bytes of UTF-8 (on a character boundary, and on a
    line boundary when one is near), and its size before the cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, len(data)
    cut = data[:limit].decode("utf-8", "ignore")
    line_end = cut.rfind("\n")
    if line_end >= len(cut) // 2:
        cut = cut[: line_end + 1]
    return cut, len(data)


def preview(
    kind: PreviewKind, *, tool: str, subject: str, cwd: str, text: str
) -> CheckpointPreview:
    """A preview of ``text``, capped (the cap is recorded, never silent)."""
    body, full_size = capped(text)
    return CheckpointPreview(
        kind, tool[:MAX_TOOL], subject[:MAX_SUBJECT], cwd[:MAX_CWD], body, full_size
    )


def unified_diff(path: str, before: str | None, after: str) -> str:
    """The unified diff from ``before`` to ``after``, labelled ``a/``/``b/`` like git
    (``/dev/null`` for a file that does not exist yet, i.e. ``before`` is None)."""
    old_label = "/dev/null" if before is None else _label("a", path)
    lines = difflib.unified_diff(
        (before or "").splitlines(keepends=True),
        after.splitlines(keepends=True),
        old_label,
        _label("b", path),
    )
    out = []
    for line in lines:
        if not line.endswith("\n"):  # the last line of a file without a newline
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return "".join(out)


def _label(side: str, path: str) -> str:
    return side + path if path.startswith("/") else f"{side}/{path}"


class EditDoesNotApply(UsageError):
    """An edit's ``old_string`` is not in the file (the agent's tool would fail too)."""


@dataclass(frozen=True)
class Edit:
    old: str
    new: str
    replace_all: bool = False


def apply_edits(text: str, edits: Sequence[Edit]) -> str:
    """The file after Claude Code's ``Edit``/``MultiEdit`` semantics: each edit in
    turn replaces its ``old`` (the first occurrence, or all with ``replace_all``)."""
    for number, edit in enumerate(edits, 1):
        if not edit.old:
            if text:
                raise EditDoesNotApply(f"edit {number} has an empty old_string")
            text = edit.new
            continue
        if edit.old not in text:
            raise EditDoesNotApply(f"edit {number}: old_string not found in the file")
        text = (
            text.replace(edit.old, edit.new)
            if edit.replace_all
            else text.replace(edit.old, edit.new, 1)
        )
    return text


# --- the local API's JSON form (``"preview": {...}`` in a checkpoint request) ----------

_FIELDS = ("type", "tool", "subject", "cwd", "text")


def to_json(value: CheckpointPreview) -> dict[str, Any]:
    return {
        "type": value.type.value,
        "tool": value.tool,
        "subject": value.subject,
        "cwd": value.cwd,
        "text": value.text,
        "full_size": value.full_size,
        "truncated": value.truncated,
    }


def from_json(value: object) -> CheckpointPreview:
    """A preview from JSON (the local API, the controller's cache); raises
    :class:`UsageError` for anything but the exact shape :func:`to_json` writes."""
    if not isinstance(value, dict):
        raise UsageError("a preview must be an object")
    unknown = set(value) - {*_FIELDS, "full_size", "truncated"}
    if unknown:
        raise UsageError(f"unknown preview field {sorted(unknown)[0][:40]!r}")
    texts = {}
    for name in _FIELDS:
        item = value.get(name, "")
        # A file's text may hold NUL (and printers escape it); names and paths may not.
        if not isinstance(item, str) or ("\0" in item and name != "text"):
            raise UsageError(f"preview {name} must be a string without NUL")
        texts[name] = item
    if texts["type"] not in PreviewKind._value2member_map_:
        raise UsageError("preview type must be command, diff or text")
    size = utf8_size(texts["text"])
    full_size = value.get("full_size", size)
    if type(full_size) is not int:
        raise UsageError("preview full_size must be a whole number")
    return CheckpointPreview(
        PreviewKind(texts["type"]),
        texts["tool"],
        texts["subject"],
        texts["cwd"],
        texts["text"],
        full_size,
    )
