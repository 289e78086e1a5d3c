"""The working-tree diff of a session's cwd, computed with git on this machine.

Answers the ``show-diff`` command (:mod:`starmux.review_messages`); the report's shape
and its size cap are :mod:`starmux.worktree_diff`'s.

Why these git options: the session's repository is the agent's to change, and some
git settings run programs (``core.fsmonitor``, external diff drivers, textconv
filters); the daemon turns those off so that asking for a diff runs only git.
``GIT_OPTIONAL_LOCKS=0`` keeps git from rewriting the index while the agent works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from starmux.errors import UsageError
from starmux.worktree_diff import (
    DiffReport,
    FileChange,
    count_lines,
    parse_name_status,
    parse_numstat,
)

#: git's hash of the empty tree: the base of a repository without a first commit.
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
READ_LIMIT = 4 * 1024 * 1024  # bytes read of one git output; the report is cut far below
GIT_TIMEOUT = 20.0
MAX_UNTRACKED = 200
_SAFE = (
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.quotepath=on",
    "-c",
    "color.ui=false",
)


class NotAGitTree(UsageError):
    """The session's cwd is not inside a git work tree."""


async def _git(root: Path, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[bytes, int]:
    """Run git in ``root``; its stdout (at most READ_LIMIT bytes) and its full size."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    process = await asyncio.create_subprocess_exec(
        "git",
        *_SAFE,
        "-C",
        str(root),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    chunks: list[bytes] = []
    kept = total = 0
    try:
        async with asyncio.timeout(GIT_TIMEOUT):
            while chunk := await process.stdout.read(65536):
                total += len(chunk)
                if kept < READ_LIMIT:
                    chunks.append(chunk[: READ_LIMIT - kept])
                    kept += len(chunks[-1])
            error = await process.stderr.read(4096)
            code = await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise UsageError(f"git took longer than {GIT_TIMEOUT:.0f} s; gave up") from None
    if code not in ok:
        message = error.decode("utf-8", "replace").strip().splitlines()
        raise UsageError(f"git {args[0]} failed: {message[0] if message else code}")
    return b"".join(chunks), total


async def working_tree_diff(cwd: Path, *, stat: bool) -> DiffReport:
    """Tracked changes against HEAD (or the empty tree) and untracked files as new ones."""
    try:
        top, _ = await _git(cwd, "rev-parse", "--show-toplevel")
    except UsageError as exc:
        raise NotAGitTree(
            f"{cwd} is not inside a git work tree",
            hint="starmux diff shows what git sees in the session's folder",
        ) from exc
    except FileNotFoundError as exc:
        raise UsageError("git is not installed on the machine") from exc
    root = Path(top.decode("utf-8", "surrogateescape").strip())
    try:
        await _git(root, "rev-parse", "--verify", "-q", "HEAD")
        base = "HEAD"
    except UsageError:
        base = EMPTY_TREE
    numstat, _ = await _git(root, "diff", "--numstat", "-z", "--no-renames", base, "--")
    names, _ = await _git(root, "diff", "--name-status", "-z", "--no-renames", base, "--")
    counts, statuses = parse_numstat(numstat), parse_name_status(names)
    files = [
        FileChange(path, statuses.get(path, "modified"), *counts[path]) for path in sorted(counts)
    ]
    parts: list[str] = []
    full_size = 0
    if not stat:
        tracked, size = await _git(
            root, "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", base, "--"
        )
        parts.append(tracked.decode("utf-8", "replace"))
        full_size += size
    listing, _ = await _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    untracked = [p.decode("utf-8", "replace") for p in listing.split(b"\0") if p]
    for path in untracked[:MAX_UNTRACKED]:
        output, size = await _git(
            root,
            "diff",
            "--no-index",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--",
            "/dev/null",
            path,
            ok=(0, 1),  # 1: "there are differences", always for a new file
        )
        diff = output.decode("utf-8", "replace")
        added, removed = count_lines(diff)
        binary = "Binary files" in diff.split("\n@@", 1)[0] and not added
        files.append(FileChange(path, "untracked", added, removed, binary))
        if not stat:
            parts.append(diff)
            full_size += size
    text = "".join(parts)
    return DiffReport(
        str(root),
        tuple(files),
        text,
        full_size,
        truncated=len(text.encode()) < full_size,
        files_truncated=len(untracked) > MAX_UNTRACKED,
    )
