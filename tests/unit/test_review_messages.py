"""Review messages and reports (issue 19): who may send them, what a hostile machine's
rule events and diff reports cannot carry, and the diff report's size cap."""

from __future__ import annotations

import json

import pytest

from starmux.approval_rules import Effect
from starmux.device_roles import COMMAND_ACTIONS, Action, DeviceRole, allowed
from starmux.errors import UsageError
from starmux.messages import APP
from starmux.review_messages import ApprovalRuleSet, RemoveApprovalRule, SetApprovalRule, ShowDiff
from starmux.worktree_diff import MAX_RESULT, DiffReport, FileChange, decode, encode


def test_rules_need_an_operator_and_the_diff_a_viewer() -> None:
    for kind in (SetApprovalRule.KIND, RemoveApprovalRule.KIND):
        assert COMMAND_ACTIONS[kind] is Action.RULES
    assert COMMAND_ACTIONS[ShowDiff.KIND] is Action.LOGS
    assert not allowed(DeviceRole.VIEWER, Action.RULES)
    assert allowed(DeviceRole.OPERATOR, Action.RULES)
    assert allowed(DeviceRole.OWNER, Action.RULES)
    assert allowed(DeviceRole.VIEWER, Action.LOGS)


def test_rule_messages_round_trip_and_refuse_what_does_not_parse() -> None:
    rule = SetApprovalRule("r-1", "s-1", "Bash(npm test*)", Effect.ALLOW)
    assert APP.decode(APP.encode(rule)) == rule
    with pytest.raises(UsageError):
        SetApprovalRule("r-1", "s-1", "npm test\x1b[2J", Effect.ALLOW)
    with pytest.raises(UsageError):
        SetApprovalRule("r 1", "s-1", "Bash", Effect.ALLOW)
    with pytest.raises(UsageError):
        ApprovalRuleSet("r-1", "Bash", Effect.DENY, b"short")


def _report(diff: str, files: int = 2) -> DiffReport:
    changes = tuple(FileChange(f"f{n}.py", "modified", 1, 1) for n in range(files))
    return DiffReport("/srv/app", changes, diff, len(diff.encode()), False)


def test_a_large_diff_is_cut_to_fit_an_ack_and_says_so() -> None:
    diff = "".join(f"+line {n} \u00e9\x1b\n" for n in range(20_000))
    text = encode(_report(diff))
    assert len(text) <= MAX_RESULT
    report = decode(text)
    assert report.truncated and report.full_size == len(diff.encode())
    assert report.diff and diff.startswith(report.diff) and report.diff.endswith("\n")
    assert "diff cut" in report.cap_note()
    many = decode(encode(_report("", files=5000)))
    assert many.files_truncated and len(many.files) < 5000


def test_a_small_diff_is_whole() -> None:
    report = decode(encode(_report("+x\n")))
    assert report == _report("+x\n")
    assert report.cap_note() == ""


@pytest.mark.parametrize(
    "data",
    [
        "[]",
        "not json",
        json.dumps({"files": [{"path": "a", "status": "pwned", "added": 1, "removed": 0}]}),
        json.dumps(
            {
                "root": "/",
                "files": [
                    {"path": "a", "status": "added", "added": -1, "removed": 0, "binary": False}
                ],
                "diff": "",
                "full_size": 0,
                "truncated": False,
                "files_truncated": False,
            }
        ),
        json.dumps(
            {
                "root": "/",
                "files": [],
                "diff": "x" * (MAX_RESULT + 1),
                "full_size": 0,
                "truncated": False,
                "files_truncated": False,
            }
        ),
    ],
)
def test_a_hostile_diff_report_is_refused(data: str) -> None:
    with pytest.raises(UsageError):
        decode(data)
