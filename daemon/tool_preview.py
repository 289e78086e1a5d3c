"""The preview of a Claude Code tool call, computed on the machine (issue 19).

``Bash`` → the command and its cwd; ``Edit``/``MultiEdit``/``Write`` → the unified
diff of the file as it is now against the file as the tool would leave it; any
other tool → its main field as text. The pure parts (diff, edit semantics, the
cap) are :mod:`starmux.checkpoint_preview`'s; this module only reads the file.

A preview is a courtesy to the person deciding, never a reason to fail: a file that
cannot be read, is not UTF-8 or is larger than :data:`MAX_FILE` gets a text preview
saying so (the checkpoint is still raised, with its body).
"""

from __future__ import annotations

import json
import os
from typing import Any

from starmux.checkpoint_preview import (
    CheckpointPreview,
    Edit,
    EditDoesNotApply,
    PreviewKind,
    apply_edits,
    preview,
    unified_diff,
)

MAX_FILE = 8 * 1024 * 1024  # bytes of a file read to diff it
_SUBJECT_FIELDS = ("command", "file_path", "notebook_path", "url", "query", "pattern", "path")


def _read(path: str) -> str | None:
    """The file's text, None if it does not exist; raises ValueError if unusable."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size > MAX_FILE:
                raise ValueError(f"the file is larger than {MAX_FILE // (1024 * 1024)} MiB")
            data = file.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"the file cannot be read ({exc.strerror})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None


def _edits(tool: str, tool_input: dict[str, Any]) -> list[Edit]:
    raw = tool_input.get("edits") if tool == "MultiEdit" else [tool_input]
    if not isinstance(raw, list):
        raise ValueError("the edit has no edits list")  # noqa: TRY004 (one error type)
    edits = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("an edit is not an object")  # noqa: TRY004
        old, new = item.get("old_string", ""), item.get("new_string", "")
        if not isinstance(old, str) or not isinstance(new, str):
            raise ValueError("old_string/new_string is not text")  # noqa: TRY004
        edits.append(Edit(old, new, item.get("replace_all") is True))
    return edits


def _file_diff(tool: str, tool_input: dict[str, Any], path: str, cwd: str) -> CheckpointPreview:
    try:
        before = _read(path)
        if tool == "Write":
            content = tool_input.get("content", "")
            if not isinstance(content, str):
                raise ValueError("the content is not text")
            after = content
        else:
            if before is None:
                raise ValueError("the file does not exist")
            after = apply_edits(before, _edits(tool, tool_input))
    except (ValueError, EditDoesNotApply) as exc:
        reason = exc.message if isinstance(exc, EditDoesNotApply) else str(exc)
        return preview(
            PreviewKind.TEXT,
            tool=tool,
            subject=path,
            cwd=cwd,
            text=f"no diff of {path}: {reason}\n\n" + json.dumps(tool_input, indent=2),
        )
    return preview(
        PreviewKind.DIFF, tool=tool, subject=path, cwd=cwd, text=unified_diff(path, before, after)
    )


def tool_preview(tool: str, tool_input: dict[str, Any], cwd: str) -> CheckpointPreview:
    """What a PreviewToolUse call of ``tool`` would do, as a capped preview."""
    if tool == "Bash":
        command = tool_input.get("command")
        if isinstance(command, str):
            return preview(PreviewKind.COMMAND, tool=tool, subject=command, cwd=cwd, text=command)
    path = tool_input.get("file_path")
    if tool in ("Edit", "MultiEdit", "Write") and isinstance(path, str) and path:
        absolute = path if os.path.isabs(path) else os.path.join(cwd or os.getcwd(), path)
        return _file_diff(tool, tool_input, os.path.normpath(absolute), cwd)
    subject = next(
        (v for f in _SUBJECT_FIELDS if isinstance(v := tool_input.get(f), str) and v), ""
    )
    text = json.dumps(tool_input, indent=2, ensure_ascii=False)
    return preview(PreviewKind.TEXT, tool=tool, subject=subject, cwd=cwd, text=text)
