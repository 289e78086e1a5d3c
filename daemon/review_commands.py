"""The review commands a controller sends (issue 19): approval rules and the diff.

Kept apart from :mod:`.live` (which checks the device's role first, then calls
:func:`run`) so the channel code stays about channels.
"""

from __future__ import annotations

from pathlib import Path

from starmux import worktree_diff
from starmux.errors import UsageError
from starmux.review_messages import RemoveApprovalRule, SetApprovalRule, ShowDiff

from .eventlog import EventLog
from .rulebook import Rulebook
from .worktree import working_tree_diff

ReviewCommand = SetApprovalRule | RemoveApprovalRule | ShowDiff


async def run(
    command: ReviewCommand, *, rules: Rulebook, log: EventLog, by: bytes, now: float
) -> str:
    """Carry out one review command; its result is what the ack says."""
    if isinstance(command, SetApprovalRule):
        return await rules.set(
            command.rule, command.session, command.pattern, command.effect, by=by, now=now
        )
    if isinstance(command, RemoveApprovalRule):
        return await rules.remove(command.rule, by=by, now=now)
    rows = await log.execute_read("SELECT cwd FROM sessions WHERE id = ?", (command.session,))
    if not rows:
        raise UsageError(f"no session {command.session} on this machine")
    cwd = Path(rows[0][0])
    if not cwd.is_dir():  # noqa: ASYNC240 (one stat of a local folder)
        raise UsageError(f"the session's folder {cwd} no longer exists")
    report = await working_tree_diff(cwd, stat=command.stat)
    return worktree_diff.encode(report)
