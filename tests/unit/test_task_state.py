"""The task state table (DESIGN.md section 13): every legal transition, every illegal
one, the attempts and events each step leaves, and each timeout at its exact deadline.

Times are small binary fractions so that ``deadline`` and ``deadline - EPS`` are exact.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from starmux.errors import UsageError
from starmux.task_state import (
    FINAL,
    MAX_REASON,
    TRANSITIONS,
    Task,
    TaskEvent,
    TaskState,
    Trigger,
    apply,
    due,
    expire_due,
    heard,
    next_deadline,
    transition,
)

S, T = TaskState, Trigger
EPS = 2.0**-10
LIVE = (S.RUNNING, S.AWAITING_APPROVAL)

LEGAL = {
    (S.QUEUED, T.ASSIGN): S.ASSIGNED,
    (S.QUEUED, T.CANCEL): S.CANCELLED,
    (S.QUEUED, T.SCHEDULE_TIMEOUT): S.EXPIRED,
    (S.ASSIGNED, T.ACCEPT): S.ACCEPTED,
    (S.ASSIGNED, T.ACK_TIMEOUT): S.QUEUED,
    (S.ASSIGNED, T.REFUSE): S.QUEUED,
    (S.ASSIGNED, T.CANCEL): S.CANCELLED,
    (S.ASSIGNED, T.SCHEDULE_TIMEOUT): S.EXPIRED,
    (S.ACCEPTED, T.START): S.RUNNING,
    (S.ACCEPTED, T.FAIL): S.FAILED,
    (S.ACCEPTED, T.CANCEL): S.CANCELLED,
    (S.ACCEPTED, T.LOSE): S.LOST,
    (S.ACCEPTED, T.SCHEDULE_TIMEOUT): S.EXPIRED,
    (S.RUNNING, T.AWAIT_APPROVAL): S.AWAITING_APPROVAL,
    (S.AWAITING_APPROVAL, T.RESUME): S.RUNNING,
    (S.RUNNING, T.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, T.FAIL): S.FAILED,
    (S.RUNNING, T.CANCEL): S.CANCELLED,
    (S.RUNNING, T.TIME_OUT): S.TIMED_OUT,
    (S.RUNNING, T.LOSE): S.LOST,
    (S.AWAITING_APPROVAL, T.SUCCEED): S.SUCCEEDED,
    (S.AWAITING_APPROVAL, T.FAIL): S.FAILED,
    (S.AWAITING_APPROVAL, T.CANCEL): S.CANCELLED,
    (S.AWAITING_APPROVAL, T.TIME_OUT): S.TIMED_OUT,
    (S.AWAITING_APPROVAL, T.LOSE): S.LOST,
}
ILLEGAL = sorted(set(itertools.product(TaskState, Trigger)) - set(LEGAL))


def task_in(state: TaskState, **changes: Any) -> Task:
    """A task that reached ``state`` the ordinary way, at times 1, 2, 3."""
    defaults: dict[str, Any] = {"id": "t1", "scheduled_at": 0.0, "state": state}
    if state is not S.QUEUED:
        defaults.update(machine="m1", assigned_at=1.0)
    if state in (S.ACCEPTED, *LIVE):
        defaults.update(heard_at=2.0)
    if state in LIVE:
        defaults.update(started_at=3.0, heard_at=3.0)
    defaults.update(changes)
    return Task(**defaults)


def test_the_table_is_the_documented_one() -> None:
    assert TRANSITIONS == LEGAL
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.LOST, S.EXPIRED} == FINAL
    # Final states have no way out; every other state has one.
    assert {state for state, _ in LEGAL} == set(TaskState) - FINAL


@pytest.mark.parametrize(("current", "trigger"), sorted(LEGAL))
def test_every_legal_transition(current: TaskState, trigger: Trigger) -> None:
    assert transition(current, trigger) is LEGAL[current, trigger]
    task = task_in(current)
    after, events = apply(task, trigger, now=10.0, machine="m2", exit_code=0)
    assert events[0] == TaskEvent(
        "t1",
        10.0,
        1,
        "m2" if trigger is T.ASSIGN else task.machine,
        current,
        LEGAL[current, trigger],
        trigger,
        "refused, no reason given" if trigger is T.REFUSE else None,
    )
    assert len(events) == 1  # not marked retry-on-lost: a single event, always
    assert after.state is events[0].new
    assert after.attempt == (2 if trigger in (T.ACK_TIMEOUT, T.REFUSE) else 1)


@pytest.mark.parametrize(("current", "trigger"), ILLEGAL)
def test_every_illegal_transition_raises(current: TaskState, trigger: Trigger) -> None:
    with pytest.raises(UsageError, match=f"cannot {trigger.value} when {current.value}"):
        transition(current, trigger)
    with pytest.raises(UsageError):
        apply(task_in(current), trigger, now=10.0, machine="m2")


def test_a_whole_run_records_every_time_and_machine() -> None:
    task = Task("t1", scheduled_at=0.0)
    log: list[TaskEvent] = []
    for trigger, now in [
        (T.ASSIGN, 1.0),
        (T.ACCEPT, 2.0),
        (T.START, 3.0),
        (T.AWAIT_APPROVAL, 4.0),
        (T.RESUME, 5.0),
    ]:
        task, events = apply(task, trigger, now=now, machine="gpu-1")
        log += events
    task, events = apply(task, T.FAIL, now=6.0, exit_code=3)
    log += events
    assert task.state is S.FAILED and task.exit_code == 3
    assert (task.assigned_at, task.started_at, task.finished_at) == (1.0, 3.0, 6.0)
    assert [(e.at, e.machine, e.attempt, e.new) for e in log] == [
        (1.0, "gpu-1", 1, S.ASSIGNED),
        (2.0, "gpu-1", 1, S.ACCEPTED),
        (3.0, "gpu-1", 1, S.RUNNING),
        (4.0, "gpu-1", 1, S.AWAITING_APPROVAL),
        (5.0, "gpu-1", 1, S.RUNNING),
        (6.0, "gpu-1", 1, S.FAILED),
    ]
    # Resuming after approval does not restart the start-to-close clock.
    assert task.started_at == 3.0


def test_assigning_needs_a_machine() -> None:
    with pytest.raises(UsageError, match="machine"):
        apply(Task("t1", scheduled_at=0.0), T.ASSIGN, now=1.0)


def test_ack_timeout_requeues_as_the_next_attempt() -> None:
    task = task_in(S.ASSIGNED)
    after, events = apply(task, T.ACK_TIMEOUT, now=31.0)
    assert after.state is S.QUEUED and after.attempt == 2
    assert after.machine is None and after.assigned_at is None
    assert after.scheduled_at == task.scheduled_at  # still waiting to start since then
    assert events == (TaskEvent("t1", 31.0, 1, "m1", S.ASSIGNED, S.QUEUED, T.ACK_TIMEOUT),)


@pytest.mark.parametrize("state", [S.ACCEPTED, *LIVE])
def test_a_lost_task_is_not_rerun_unless_marked(state: TaskState) -> None:
    after, events = apply(task_in(state), T.LOSE, now=70.0)
    assert after.state is S.LOST and after.final and after.attempt == 1
    assert [e.new for e in events] == [S.LOST]


@pytest.mark.parametrize("state", [S.ACCEPTED, *LIVE])
def test_a_lost_task_marked_retry_on_lost_is_queued_again(state: TaskState) -> None:
    after, events = apply(task_in(state, retry_on_lost=True), T.LOSE, now=70.0)
    assert after.state is S.QUEUED and after.attempt == 2
    assert after.machine is None and after.started_at is None and after.heard_at is None
    assert after.scheduled_at == 70.0  # a new run is scheduled now
    assert events == (
        TaskEvent("t1", 70.0, 1, "m1", state, S.LOST, T.LOSE),
        TaskEvent("t1", 70.0, 2, None, S.LOST, S.QUEUED, T.LOSE),
    )


def test_retry_on_lost_stops_at_max_attempts() -> None:
    task = task_in(S.RUNNING, retry_on_lost=True, max_attempts=2, attempt=2)
    after, events = apply(task, T.LOSE, now=70.0)
    assert after.state is S.LOST and after.attempt == 2
    assert len(events) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule_to_start", 0.0),
        ("assign_ack", -1.0),
        ("start_to_close", float("inf")),
        ("heartbeat", float("nan")),
        ("heartbeat", 400 * 24 * 3600.0),
        ("scheduled_at", float("inf")),
        ("max_attempts", 0),
    ],
)
def test_hostile_durations_are_refused(field: str, value: float) -> None:
    fields: dict[str, Any] = {"id": "t1", "scheduled_at": 0.0, field: value}
    with pytest.raises(UsageError):
        Task(**fields)


# --- timeouts, at their exact boundaries ------------------------------------------


@pytest.mark.parametrize("state", [S.QUEUED, S.ASSIGNED, S.ACCEPTED])
def test_schedule_to_start_expires_exactly_at_its_deadline(state: TaskState) -> None:
    task = task_in(state, schedule_to_start=1.0, assign_ack=None, heartbeat=None)
    assert next_deadline(task) == 1.0
    assert due(task, 1.0 - EPS) is None
    assert due(task, 1.0) is T.SCHEDULE_TIMEOUT
    after, events = expire_due(task, 5.0)
    assert after.state is S.EXPIRED and after.finished_at == 1.0  # stamped at the deadline
    assert [(e.at, e.new) for e in events] == [(1.0, S.EXPIRED)]


def test_schedule_to_start_stops_once_running() -> None:
    task = task_in(S.RUNNING, schedule_to_start=1.0, heartbeat=None)
    assert next_deadline(task) is None and due(task, 1e6) is None


def test_assign_ack_timeout_exactly_at_its_deadline() -> None:
    task = task_in(S.ASSIGNED, assign_ack=0.5)  # assigned at 1.0
    assert next_deadline(task) == 1.5
    assert due(task, 1.5 - EPS) is None
    assert due(task, 1.5) is T.ACK_TIMEOUT
    after, _ = expire_due(task, 1.5)
    assert (after.state, after.attempt) == (S.QUEUED, 2)


def test_ack_timeout_then_schedule_timeout_in_one_late_call() -> None:
    task = task_in(S.ASSIGNED, assign_ack=0.5, schedule_to_start=4.0)
    after, events = expire_due(task, 100.0)
    assert after.state is S.EXPIRED and after.attempt == 2
    assert [(e.at, e.attempt, e.new) for e in events] == [(1.5, 1, S.QUEUED), (4.0, 2, S.EXPIRED)]


@pytest.mark.parametrize("state", LIVE)
def test_start_to_close_times_out_exactly_at_its_deadline(state: TaskState) -> None:
    task = task_in(state, start_to_close=2.0, heartbeat=None)  # started at 3.0
    assert due(task, 5.0 - EPS) is None
    assert due(task, 5.0) is T.TIME_OUT
    after, _ = expire_due(task, 5.0)
    assert after.state is S.TIMED_OUT and after.finished_at == 5.0


@pytest.mark.parametrize("state", [S.ACCEPTED, *LIVE])
def test_heartbeat_loss_is_lost_exactly_at_its_deadline(state: TaskState) -> None:
    task = task_in(state, heartbeat=0.25)
    last = task.heard_at
    assert last is not None
    assert due(task, last + 0.25 - EPS) is None
    assert due(task, last + 0.25) is T.LOSE
    after, _ = expire_due(task, last + 0.25)
    assert after.state is S.LOST


def test_a_heartbeat_moves_the_deadline_and_a_late_old_one_does_not() -> None:
    task = task_in(S.RUNNING, heartbeat=1.0)  # heard at 3.0
    task = heard(task, 3.5)
    assert next_deadline(task) == 4.5
    assert heard(task, 3.25) is task  # an older sign of life arriving late
    assert due(task, 4.5 - EPS) is None
    assert heard(task_in(S.QUEUED), 9.0).heard_at is None  # no machine to hear from


def test_the_earliest_deadline_wins_whatever_the_timer_lateness() -> None:
    # Heartbeat runs out at 3.5, start-to-close at 4.0: lost, whenever we look.
    task = task_in(S.RUNNING, heartbeat=0.5, start_to_close=1.0)
    for now in (3.5, 4.0, 1000.0):
        assert due(task, now) is T.LOSE
    # Equal deadlines: start-to-close before heartbeat (the task did run out its time).
    task = task_in(S.RUNNING, heartbeat=1.0, start_to_close=1.0)
    assert due(task, 4.0) is T.TIME_OUT


def test_lost_with_retry_by_timeout_is_rescheduled_at_the_deadline() -> None:
    task = task_in(S.RUNNING, heartbeat=1.0, retry_on_lost=True, schedule_to_start=10.0)
    after, events = expire_due(task, 4.0)
    assert (after.state, after.attempt, after.scheduled_at) == (S.QUEUED, 2, 4.0)
    assert next_deadline(after) == 14.0
    assert [e.new for e in events] == [S.LOST, S.QUEUED]


def test_no_timeouts_means_no_deadline() -> None:
    task = task_in(S.RUNNING, heartbeat=None)
    assert next_deadline(task) is None
    assert expire_due(task, 1e9) == (task, ())


# --- refusals and the attempt limit (issue 18 gaps) -----------------------------------


def test_a_refusal_is_its_own_outcome_with_the_machines_words() -> None:
    task = task_in(S.ASSIGNED)
    after, events = apply(task, T.REFUSE, now=5.0, reason="role viewer may not run")
    assert (after.state, after.attempt, after.machine) == (S.QUEUED, 2, None)
    assert events == (
        TaskEvent("t1", 5.0, 1, "m1", S.ASSIGNED, S.QUEUED, T.REFUSE, "role viewer may not run"),
    )


def test_a_refusal_with_nowhere_else_to_go_fails_with_the_reason() -> None:
    task = task_in(S.ASSIGNED)
    after, events = apply(task, T.REFUSE, now=5.0, reason="x" * 5000, elsewhere=False)
    assert after.state is S.FAILED and after.attempt == 1 and after.finished_at == 5.0
    assert after.reason is not None and len(after.reason) == MAX_REASON  # cut: a peer wrote it
    assert after.reason.startswith("xxx") and events[0].new is S.FAILED


def test_ack_timeouts_count_against_max_attempts() -> None:
    """Old code: every ack timeout queued the task again, forever."""
    task = Task("t1", scheduled_at=0.0, assign_ack=1.0, max_attempts=3)
    history = []
    for n in range(10):
        if task.final:
            break
        task, _ = apply(task, T.ASSIGN, now=float(10 * n), machine="m1")
        task, events = expire_due(task, float(10 * n + 1))
        history.append((events[0].new, events[0].attempt))
    assert history == [(S.QUEUED, 1), (S.QUEUED, 2), (S.FAILED, 3)]
    assert task.state is S.FAILED and task.reason == "attempt 3 of 3 was not acknowledged in time"


def test_refusals_count_against_max_attempts_too() -> None:
    task = Task("t1", scheduled_at=0.0, max_attempts=2)
    task, _ = apply(task, T.ASSIGN, now=1.0, machine="m1")
    task, _ = apply(task, T.REFUSE, now=2.0, reason="no")
    task, _ = apply(task, T.ASSIGN, now=3.0, machine="m2")
    task, events = apply(task, T.REFUSE, now=4.0, reason="no either")
    assert events[-1].new is S.FAILED
    assert task.state is S.FAILED and task.reason == "no either (no attempt left)"
