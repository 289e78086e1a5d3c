"""Task messages on the APP codec: round trips, and what a hostile machine or
controller might send failing to decode at all."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from starmux.device_roles import COMMAND_ACTIONS, Action, DeviceRole, allowed
from starmux.errors import MessageError
from starmux.messages import APP
from starmux.placement import Machine
from starmux.task_messages import (
    MACHINE_STATES,
    AssignTask,
    CancelTask,
    MachineLoad,
    TaskProgress,
    trigger_for,
)
from starmux.task_state import TaskState, Trigger

S, T = TaskState, Trigger


def wire(kind: str, **values: Any) -> bytes:
    return bytes(msgpack.packb([kind, 1, values]))


ASSIGN = {
    "task": "t1",
    "attempt": 1,
    "priority": 0,
    "argv": ["claude", "-p", "fix"],
    "cwd": "/w",
    "title": "fix",
    "env": {},
    "pty": False,
    "start_to_close": None,
}
PROGRESS = {"task": "t1", "attempt": 2, "state": "running", "session": "s1", "exit_code": None}
LOAD = {"tags": ["gpu", "os=linux"], "capacity": 2, "running": 1, "queued": 0}


@pytest.mark.parametrize(
    "message",
    [
        AssignTask("t1", 3, -5, ("true",), "/w", "t", {"A": "b"}, True, 90.5),
        AssignTask("t1", 1, 0, ("true",), "/w", "", {}, False, None),
        CancelTask("t1", 2),
        TaskProgress("t1", 1, S.SUCCEEDED, "s1", 0),
        TaskProgress("t1", 1, S.ACCEPTED, None, None),
        MachineLoad(("gpu", "os=linux"), 2, 1, 3),
    ],
)
def test_round_trip(message: Any) -> None:
    assert APP.decode(APP.encode(message)) == message


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(wire("assign-task", **{**ASSIGN, "task": "../t"}), id="path-task-id"),
        pytest.param(wire("assign-task", **{**ASSIGN, "attempt": 0}), id="attempt-0"),
        pytest.param(wire("assign-task", **{**ASSIGN, "priority": 10**6}), id="priority"),
        pytest.param(wire("assign-task", **{**ASSIGN, "argv": []}), id="no-command"),
        pytest.param(wire("assign-task", **{**ASSIGN, "start_to_close": 0.0}), id="zero-timeout"),
        pytest.param(
            wire("assign-task", **{**ASSIGN, "start_to_close": float("inf")}), id="inf-timeout"
        ),
        pytest.param(wire("cancel-task", task="t\x1b[2J", attempt=1), id="escape-in-id"),
        pytest.param(wire("task-progress", **{**PROGRESS, "state": "expired"}), id="expired"),
        pytest.param(wire("task-progress", **{**PROGRESS, "state": "queued"}), id="queued"),
        pytest.param(wire("task-progress", **{**PROGRESS, "state": "won"}), id="no-state"),
        pytest.param(wire("task-progress", **{**PROGRESS, "session": "a b"}), id="session"),
        pytest.param(wire("machine-load", **{**LOAD, "tags": ["GPU"]}), id="bad-tag"),
        pytest.param(
            wire("machine-load", **{**LOAD, "tags": [f"t{i}" for i in range(40)]}), id="tags"
        ),
        pytest.param(wire("machine-load", **{**LOAD, "capacity": 0}), id="capacity-0"),
        pytest.param(wire("machine-load", **{**LOAD, "capacity": 10**6}), id="capacity"),
        pytest.param(wire("machine-load", **{**LOAD, "running": -1}), id="negative-load"),
    ],
)
def test_hostile_task_messages_do_not_decode(data: bytes) -> None:
    with pytest.raises(MessageError):
        APP.decode(data)


def test_a_machine_reports_only_the_states_it_decides() -> None:
    assert {
        S.ACCEPTED,
        S.RUNNING,
        S.AWAITING_APPROVAL,
        S.SUCCEEDED,
        S.FAILED,
        S.CANCELLED,
        S.TIMED_OUT,  # start-to-close is enforced on the machine
        S.LOST,  # a task its restarted daemon knows is gone
    } == MACHINE_STATES


@pytest.mark.parametrize(
    ("current", "reported", "trigger"),
    [
        (S.ASSIGNED, S.ACCEPTED, T.ACCEPT),
        (S.ACCEPTED, S.RUNNING, T.START),
        (S.AWAITING_APPROVAL, S.RUNNING, T.RESUME),
        (S.RUNNING, S.AWAITING_APPROVAL, T.AWAIT_APPROVAL),
        (S.RUNNING, S.SUCCEEDED, T.SUCCEED),
        (S.ACCEPTED, S.FAILED, T.FAIL),
        (S.RUNNING, S.CANCELLED, T.CANCEL),
        (S.RUNNING, S.TIMED_OUT, T.TIME_OUT),
        (S.ACCEPTED, S.TIMED_OUT, None),  # start-to-close runs from the start
        (S.QUEUED, S.RUNNING, None),  # never assigned to it
        (S.SUCCEEDED, S.FAILED, None),  # final stays final
        (S.RUNNING, S.LOST, T.LOSE),  # its daemon restarted under it
        (S.ASSIGNED, S.EXPIRED, None),  # the controller's to decide
    ],
)
def test_trigger_for_a_reported_state(
    current: TaskState, reported: TaskState, trigger: Trigger | None
) -> None:
    assert trigger_for(current, reported) is trigger


def test_a_load_report_is_what_placement_reads() -> None:
    load = MachineLoad(("gpu",), 4, 1, 2)
    assert load.machine("m1", online=True) == Machine("m1", frozenset({"gpu"}), 4, 1, 2, True)


def test_operators_and_owners_dispatch_viewers_do_not() -> None:
    for kind, action in (("assign-task", Action.RUN), ("cancel-task", Action.CANCEL)):
        assert COMMAND_ACTIONS[kind] is action
        assert allowed(DeviceRole.OPERATOR, action) and allowed(DeviceRole.OWNER, action)
        assert not allowed(DeviceRole.VIEWER, action)
