"""``starmux diff SESSION``: the working-tree diff of a session's cwd, as data.

The machine computes it with git (:mod:`starmux.daemon.worktree`) and answers the
``show-diff`` command with :func:`encode` in its ack's ``result``; the controller
reads it back with :func:`decode`, which treats it as hostile (types, sizes).

Invariants:
- The encoded report fits :data:`MAX_RESULT` bytes (the ack must fit one live
  message): :func:`encode` drops diff text, then file entries, until it does, and
  says so (``truncated``, ``files_truncated``, ``full_size``).
- Untracked files are part of the diff (as new files), so "what did the agent do"
  includes the files it created.
- Pure: git's ``-z`` outputs in, a report out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from .errors import UsageError

MAX_RESULT = 40 * 1024  # bytes of JSON in a command-ack's result
MAX_FILES = 500
FILE_STATUSES = frozenset({"modified", "added", "deleted", "renamed", "untracked", "changed"})
_LETTERS = {"M": "modified", "A": "added", "D": "deleted", "R": "renamed", "T": "changed"}


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str
    added: int
    removed: int
    binary: bool = False


@dataclass(frozen=True)
class DiffReport:
    root: str  # the git work tree's top folder
    files: tuple[FileChange, ...]
    diff: str  # unified diff text ("" with --stat)
    full_size: int  # bytes of diff text before any cut
    truncated: bool  # the diff text was cut
    files_truncated: bool = False  # not every changed file is listed

    def cap_note(self) -> str:
        notes = []
        if self.truncated:
            notes.append(f"diff cut: {len(self.diff.encode())} of {self.full_size} bytes shown")
        if self.files_truncated:
            notes.append(f"only {len(self.files)} changed files listed")
        return "; ".join(notes)


def parse_numstat(output: bytes) -> dict[str, tuple[int, int, bool]]:
    """``git diff --numstat -z`` → path → (added, removed, binary)."""
    counts: dict[str, tuple[int, int, bool]] = {}
    for record in output.split(b"\0"):
        fields = record.split(b"\t", 2)
        if len(fields) != 3 or not fields[2]:
            continue
        binary = fields[0] == b"-"
        added = 0 if binary else int(fields[0] or 0)
        removed = 0 if binary else int(fields[1] or 0)
        counts[fields[2].decode("utf-8", "replace")] = (added, removed, binary)
    return counts


def parse_name_status(output: bytes) -> dict[str, str]:
    """``git diff --name-status --no-renames -z`` → path → status word."""
    items = output.split(b"\0")
    statuses: dict[str, str] = {}
    for index in range(0, len(items) - 1, 2):
        letter = items[index][:1].decode("ascii", "replace")
        statuses[items[index + 1].decode("utf-8", "replace")] = _LETTERS.get(letter, "changed")
    return statuses


def count_lines(diff: str) -> tuple[int, int]:
    """Added and removed lines of a unified diff (headers not counted)."""
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return added, removed


def to_json(report: DiffReport) -> dict[str, Any]:
    return {
        "root": report.root,
        "files": [
            {
                "path": f.path,
                "status": f.status,
                "added": f.added,
                "removed": f.removed,
                "binary": f.binary,
            }
            for f in report.files
        ],
        "diff": report.diff,
        "full_size": report.full_size,
        "truncated": report.truncated,
        "files_truncated": report.files_truncated,
    }


def encode(report: DiffReport, limit: int = MAX_RESULT) -> str:
    """The report as JSON of at most ``limit`` bytes, cutting (and saying so) if needed."""
    if len(report.files) > MAX_FILES:
        report = replace(report, files=report.files[:MAX_FILES], files_truncated=True)
    while True:
        text = json.dumps(to_json(report), separators=(",", ":"))
        if len(text) <= limit:
            return text
        if report.diff:
            data = report.diff.encode()
            # Escapes make the JSON longer than the text: cut in proportion, with room.
            keep = int(len(data) * (limit / len(text)) * 0.95)
            cut = data[:keep].decode("utf-8", "ignore")
            line_end = cut.rfind("\n")
            if line_end >= len(cut) // 2:  # end on a whole line when one is near
                cut = cut[: line_end + 1]
            report = replace(report, diff=cut, truncated=True)
        elif report.files:
            report = replace(
                report, files=report.files[: len(report.files) // 2], files_truncated=True
            )
        else:
            raise UsageError("a diff report does not fit even empty")


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise UsageError(f"the machine's diff has an invalid {name}")
    return value


def _count(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise UsageError(f"the machine's diff has an invalid {name}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"the machine's diff has an invalid {name}")
    return value


def decode(text: str) -> DiffReport:
    """A machine's ``show-diff`` result → a report; raises :class:`UsageError`."""
    if len(text) > MAX_RESULT * 2:
        raise UsageError("the machine's diff is larger than allowed")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError("the machine's diff is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise UsageError("the machine's diff is not a diff report")
    files = []
    for entry in data["files"][:MAX_FILES]:
        if not isinstance(entry, dict):
            raise UsageError("the machine's diff has an invalid file entry")
        status = _text(entry.get("status"), "status", 20)
        if status not in FILE_STATUSES:
            raise UsageError("the machine's diff has an invalid status")
        files.append(
            FileChange(
                _text(entry.get("path"), "path", 4096),
                status,
                _count(entry.get("added"), "count"),
                _count(entry.get("removed"), "count"),
                _flag(entry.get("binary"), "binary flag"),
            )
        )
    return DiffReport(
        _text(data.get("root"), "root", 4096),
        tuple(files),
        _text(data.get("diff"), "diff text", MAX_RESULT),
        _count(data.get("full_size"), "size"),
        _flag(data.get("truncated"), "truncation flag"),
        _flag(data.get("files_truncated"), "truncation flag"),
    )
