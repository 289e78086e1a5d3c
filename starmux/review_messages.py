"""Review messages (issue 19) on the :data:`~starmux.messages.APP` codec: approval rules
and the working-tree diff. Importing this module registers them.

- ``set-approval-rule`` (:class:`SetApprovalRule`), a command: from now on, answer
  the session's checkpoints that match ``pattern`` with ``effect`` (see
  :mod:`starmux.approval_rules`). Needs the ``rules`` action (operators, owners).
- ``remove-approval-rule`` (:class:`RemoveApprovalRule`), a command.
- ``approval-rule-set`` / ``approval-rule-removed``: logged events on the session,
  naming the device that did it (so every controller of the account lists them).
- ``show-diff`` (:class:`ShowDiff`), a command answered in its ack's ``result``
  (JSON, see :mod:`starmux.worktree_diff`): the session's working-tree diff.

Everything a machine says is hostile until checked: ids match
:data:`~starmux.messages.ID_PATTERN`, patterns parse, keys are 32 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .approval_rules import MAX_PATTERN, Effect, RulePattern
from .codec import Message
from .errors import UsageError
from .messages import APP, check_id


def _check_pattern(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN:
        raise UsageError("a rule pattern is too long")
    RulePattern.parse(pattern)


@APP.register
@dataclass(frozen=True)
class SetApprovalRule(Message):
    KIND = "set-approval-rule"
    rule: str  # chosen by the controller ("r-…")
    session: str
    pattern: str
    effect: Effect

    def __post_init__(self) -> None:
        check_id(self.rule, "rule id")
        check_id(self.session, "session id")
        _check_pattern(self.pattern)


@APP.register
@dataclass(frozen=True)
class RemoveApprovalRule(Message):
    KIND = "remove-approval-rule"
    rule: str

    def __post_init__(self) -> None:
        check_id(self.rule, "rule id")


@APP.register
@dataclass(frozen=True)
class ApprovalRuleSet(Message):
    KIND = "approval-rule-set"
    rule: str
    pattern: str
    effect: Effect
    by: bytes  # the device that set it

    def __post_init__(self) -> None:
        check_id(self.rule, "rule id")
        _check_pattern(self.pattern)
        if len(self.by) != 32:
            raise UsageError("a rule is set by a 32-byte device key")


@APP.register
@dataclass(frozen=True)
class ApprovalRuleRemoved(Message):
    KIND = "approval-rule-removed"
    rule: str
    by: bytes

    def __post_init__(self) -> None:
        check_id(self.rule, "rule id")
        if len(self.by) != 32:
            raise UsageError("a rule is removed by a 32-byte device key")


@APP.register
@dataclass(frozen=True)
class ShowDiff(Message):
    KIND = "show-diff"
    session: str
    stat: bool  # only the files and their line counts, no diff text

    def __post_init__(self) -> None:
        check_id(self.session, "session id")
