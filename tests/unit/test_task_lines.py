"""How ``tasks`` and ``tasks --watch`` print a task and a transition: a machine's
words (a refusal's reason, its name) are escaped before they reach the terminal."""

from __future__ import annotations

from starmux.client.task_commands import _event_line, _task_line

HOSTILE = "no\x1b]52;c;aGk=\x07 way"


def test_a_transition_line_names_the_step_machine_and_escaped_reason() -> None:
    task = {"id": "t1", "state": "failed", "exit_code": None}
    event = {"at": 0.0, "attempt": 2, "old": "assigned", "new": "failed"}
    line = _event_line(task, {**event, "trigger": "refuse", "machine": "r2", "reason": HOSTILE})
    assert "t1" in line and "#2" in line and "assigned → failed" in line
    assert "(refuse, r2): no\\x1b]52;c;aGk=\\x07 way" in line
    assert "\x1b" not in line and "\x07" not in line


def test_a_task_line_shows_why_it_failed_escaped() -> None:
    line = _task_line({"id": "t1", "state": "failed", "attempt": 2, "reason": HOSTILE})
    assert line.endswith("(no\\x1b]52;c;aGk=\\x07 way)") and "\x1b" not in line
