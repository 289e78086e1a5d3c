"""A task's life as a state machine (DESIGN.md section 13): the table below is the whole truth.

::

    queued ──assign──▶ assigned ──accept──▶ accepted ──start──▶ running ⇄ awaiting_approval
      ▲                    │                                        │
      └─ ack_timeout, refuse ┘ (a new attempt)                     ▼
                                   succeed | fail | cancel | time_out | lose
    schedule_timeout: queued | assigned | accepted ──▶ expired
    ack_timeout, refuse with no attempt left (or nowhere else to go) ──▶ failed

The vocabulary is Buildkite's and Temporal's on purpose. Timeouts, each a
duration on the :class:`Task` (``None`` = never):

- *schedule-to-start*: from ``scheduled_at`` until ``running``; runs out →
  ``expired``. An assign-ack timeout does not restart it (the task still has not
  started); a retried lost task is scheduled anew, so it does.
- *assign-ack*: from ``assigned_at`` until the machine accepts; runs out → back
  to ``queued`` as the next attempt (placement may then pick another machine).

A machine that *refuses* an assignment (its ack says no: a device role it does not
grant, a task its queue will not store) answered; it is not an ack timeout. The
task goes back to ``queued`` as the next attempt, for another machine, or ends
``failed`` with the machine's reason when the caller (the task book, which knows
the machines) says no other machine could take it.
- *start-to-close*: from ``started_at`` until a final state, time spent awaiting
  approval included; runs out → ``timed_out``.
- *heartbeat*: from the machine's last sign of life (``heard_at``) while the task
  is ``accepted``, ``running`` or ``awaiting_approval``; runs out → ``lost``.

Invariants:

- :data:`TRANSITIONS` maps (state, trigger) to the next state; anything else
  raises :class:`~starmux.errors.UsageError` (a bug in our code, not the peer's).
- A final state (:data:`FINAL`) has no transition out. The one way on after one:
  a ``lost`` attempt of a task marked ``retry_on_lost`` is followed, in the same
  step, by a new ``queued`` attempt, until ``max_attempts`` is reached. A task not
  so marked is never rerun.
- ``attempt`` starts at 1 and grows by exactly 1 with each new attempt (assign-ack
  timeout, refusal or lost retry); nothing else changes it. Every kind of attempt
  counts against ``max_attempts``: a transition of :data:`NEW_ATTEMPT` taken on
  the last attempt ends the task as :data:`GIVE_UP` says instead (``failed``, with
  a ``reason``), so no machine that never answers or always refuses keeps a task
  going round forever.
- ``reason`` (why a task failed without an exit code: the refusal, the attempts
  used up) is text a machine may have written: at most :data:`MAX_REASON`
  characters, cut here; whoever prints it escapes it.
- Every state change yields one :class:`TaskEvent` with its time, machine and
  attempt; a step that changes nothing yields none.
- A timeout fires when ``now`` reaches its deadline (``now >= deadline``); when
  several deadlines have passed, the earliest decides, so the outcome does not
  depend on how late the adapter's timer ran.

No clock: ``now`` is a parameter of every step and of :func:`due`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

from .errors import UsageError

__all__ = [
    "FINAL",
    "GIVE_UP",
    "MAX_REASON",
    "NEW_ATTEMPT",
    "TIMEOUT_TRIGGERS",
    "TRANSITIONS",
    "Task",
    "TaskEvent",
    "TaskState",
    "Trigger",
    "apply",
    "due",
    "expire_due",
    "heard",
    "next_deadline",
    "transition",
]


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    EXPIRED = "expired"


class Trigger(enum.StrEnum):
    ASSIGN = "assign"  # the controller placed it on a machine
    ACCEPT = "accept"  # the machine stored it in its durable queue
    ACK_TIMEOUT = "ack_timeout"  # the machine did not accept in time
    REFUSE = "refuse"  # the machine said no to the assignment (its ack, with a reason)
    START = "start"  # the machine started its session
    AWAIT_APPROVAL = "await_approval"  # the session waits on a checkpoint
    RESUME = "resume"  # the checkpoint was answered
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    TIME_OUT = "time_out"  # start-to-close ran out
    LOSE = "lose"  # the machine's heartbeat ran out
    SCHEDULE_TIMEOUT = "schedule_timeout"  # schedule-to-start ran out


S, T = TaskState, Trigger

FINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.LOST, S.EXPIRED})
_LIVE = (S.RUNNING, S.AWAITING_APPROVAL)

TRANSITIONS: dict[tuple[TaskState, Trigger], TaskState] = {
    (S.QUEUED, T.ASSIGN): S.ASSIGNED,
    (S.QUEUED, T.CANCEL): S.CANCELLED,
    (S.QUEUED, T.SCHEDULE_TIMEOUT): S.EXPIRED,
    (S.ASSIGNED, T.ACCEPT): S.ACCEPTED,
    (S.ASSIGNED, T.ACK_TIMEOUT): S.QUEUED,
    (S.ASSIGNED, T.REFUSE): S.QUEUED,
    (S.ASSIGNED, T.CANCEL): S.CANCELLED,
    (S.ASSIGNED, T.SCHEDULE_TIMEOUT): S.EXPIRED,
    (S.ACCEPTED, T.START): S.RUNNING,
    (S.ACCEPTED, T.FAIL): S.FAILED,  # the machine could not start it (e.g. no such cwd)
    (S.ACCEPTED, T.CANCEL): S.CANCELLED,
    (S.ACCEPTED, T.LOSE): S.LOST,
    (S.ACCEPTED, T.SCHEDULE_TIMEOUT): S.EXPIRED,
    (S.RUNNING, T.AWAIT_APPROVAL): S.AWAITING_APPROVAL,
    (S.AWAITING_APPROVAL, T.RESUME): S.RUNNING,
    **{(state, T.SUCCEED): S.SUCCEEDED for state in _LIVE},
    **{(state, T.FAIL): S.FAILED for state in _LIVE},
    **{(state, T.CANCEL): S.CANCELLED for state in _LIVE},
    **{(state, T.TIME_OUT): S.TIMED_OUT for state in _LIVE},
    **{(state, T.LOSE): S.LOST for state in _LIVE},
}

#: Transitions that begin the next attempt (besides a lost retry, see :func:`apply`).
NEW_ATTEMPT = frozenset({(S.ASSIGNED, T.ACK_TIMEOUT), (S.ASSIGNED, T.REFUSE)})

#: Where a :data:`NEW_ATTEMPT` transition goes instead when there is to be no next
#: attempt: the last one was used, or (refuse) no other machine could take it.
GIVE_UP: dict[tuple[TaskState, Trigger], TaskState] = {
    (S.ASSIGNED, T.ACK_TIMEOUT): S.FAILED,
    (S.ASSIGNED, T.REFUSE): S.FAILED,
}

#: The longest ``reason`` kept (a machine writes refusals; the rest is cut).
MAX_REASON = 300

#: The triggers :func:`due` may return: the timeouts.
TIMEOUT_TRIGGERS = frozenset({T.SCHEDULE_TIMEOUT, T.ACK_TIMEOUT, T.TIME_OUT, T.LOSE})

#: Bounds for durations given by a user or a peer: finite, positive, at most a year.
_MAX_DURATION = 366 * 24 * 3600.0


def transition(current: TaskState, trigger: Trigger) -> TaskState:
    new = TRANSITIONS.get((current, trigger))
    if new is None:
        raise UsageError(f"a task cannot {trigger.value} when {current.value}")
    return new


def _check_duration(name: str, value: float | None) -> None:
    if value is not None and not (0 < value <= _MAX_DURATION and math.isfinite(value)):
        raise UsageError(f"{name} must be a positive duration of at most a year, not {value!r}")


@dataclass(frozen=True, slots=True)
class Task:
    """What the controller knows of one task; ``machine`` is the one of this attempt."""

    id: str
    scheduled_at: float
    priority: int = 0
    retry_on_lost: bool = False
    max_attempts: int = 3
    schedule_to_start: float | None = None
    assign_ack: float | None = 30.0
    start_to_close: float | None = None
    heartbeat: float | None = 60.0
    state: TaskState = TaskState.QUEUED
    attempt: int = 1
    machine: str | None = None
    assigned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heard_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None  # why it failed without an exit code (see GIVE_UP)

    def __post_init__(self) -> None:
        for name in ("schedule_to_start", "assign_ack", "start_to_close", "heartbeat"):
            _check_duration(name, getattr(self, name))
        if not math.isfinite(self.scheduled_at):
            raise UsageError("a task's scheduled time must be finite")
        if self.max_attempts < 1 or self.attempt < 1:
            raise UsageError("attempts are counted from 1")

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change: the record every transition leaves (and ``tasks show`` lists)."""

    task: str
    at: float
    attempt: int
    machine: str | None
    old: TaskState
    new: TaskState
    trigger: Trigger
    reason: str | None = None  # a refusal's words, or why the task was given up


def _entered(task: Task, new: TaskState, now: float, machine: str | None) -> Task:
    """The task's times and machine once it has entered ``new``."""
    if new is S.ASSIGNED:
        return dataclasses.replace(task, state=new, machine=machine, assigned_at=now)
    if new is S.ACCEPTED:
        return dataclasses.replace(task, state=new, heard_at=now)
    if new is S.RUNNING and task.started_at is None:
        return dataclasses.replace(task, state=new, started_at=now, heard_at=now)
    if new in FINAL:
        return dataclasses.replace(task, state=new, finished_at=now)
    return dataclasses.replace(task, state=new)


def _next_attempt(task: Task, *, rescheduled_at: float | None) -> Task:
    return dataclasses.replace(
        task,
        state=S.QUEUED,
        attempt=task.attempt + 1,
        machine=None,
        assigned_at=None,
        started_at=None,
        finished_at=None,
        heard_at=None,
        exit_code=None,
        reason=None,
        scheduled_at=task.scheduled_at if rescheduled_at is None else rescheduled_at,
    )


def apply(
    task: Task,
    trigger: Trigger,
    *,
    now: float,
    machine: str | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
    elsewhere: bool = True,
) -> tuple[Task, tuple[TaskEvent, ...]]:
    """Take ``trigger`` at ``now``; the new task and the events of the step.

    ``machine`` is required to assign (and ignored otherwise: the task's machine
    is the one it was assigned to). ``exit_code`` is kept for succeed/fail;
    ``reason`` (cut to :data:`MAX_REASON`) is a refusal's words. ``elsewhere`` is
    whether another machine could take a next attempt: ``False`` gives up at once.
    """
    new = transition(task.state, trigger)
    if trigger is T.ASSIGN and not machine:
        raise UsageError("a task is assigned to a machine; none was given")
    where = machine if trigger is T.ASSIGN else task.machine
    said = _reason(trigger, reason)
    if (task.state, trigger) in NEW_ATTEMPT:
        if elsewhere and task.attempt < task.max_attempts:
            event = TaskEvent(task.id, now, task.attempt, where, task.state, new, trigger, said)
            return _next_attempt(task, rescheduled_at=None), (event,)
        new = GIVE_UP[(task.state, trigger)]
        said = _given_up(task, trigger, said, elsewhere=elsewhere)
    events = [TaskEvent(task.id, now, task.attempt, where, task.state, new, trigger, said)]
    after = _entered(task, new, now, where)
    if new is S.FAILED and said is not None:
        after = dataclasses.replace(after, reason=said)
    if trigger in (T.SUCCEED, T.FAIL) and exit_code is not None:
        after = dataclasses.replace(after, exit_code=exit_code)
    if new is S.LOST and task.retry_on_lost and task.attempt < task.max_attempts:
        retried = _next_attempt(after, rescheduled_at=now)
        events.append(TaskEvent(task.id, now, retried.attempt, None, S.LOST, S.QUEUED, T.LOSE))
        return retried, tuple(events)
    return after, tuple(events)


def _reason(trigger: Trigger, reason: str | None) -> str | None:
    if trigger is T.REFUSE:
        return (reason or "refused, no reason given")[:MAX_REASON]
    return reason[:MAX_REASON] if reason else None


def _given_up(task: Task, trigger: Trigger, said: str | None, *, elsewhere: bool) -> str:
    if trigger is T.ACK_TIMEOUT:
        return f"attempt {task.attempt} of {task.max_attempts} was not acknowledged in time"
    why = " (no attempt left)" if elsewhere else " (no other machine can take it)"
    return (said or "")[: MAX_REASON - len(why)] + why  # the why is never cut off


def heard(task: Task, now: float) -> Task:
    """The task's machine showed a sign of life at ``now`` (no state change, no event)."""
    if task.state not in (S.ACCEPTED, *_LIVE):
        return task
    if task.heard_at is not None and task.heard_at >= now:
        return task  # an older heartbeat arriving late must not move the deadline back
    return dataclasses.replace(task, heard_at=now)


def _deadlines(task: Task) -> list[tuple[float, Trigger]]:
    found: list[tuple[float, Trigger]] = []
    state = task.state
    if task.schedule_to_start is not None and state in (S.QUEUED, S.ASSIGNED, S.ACCEPTED):
        found.append((task.scheduled_at + task.schedule_to_start, T.SCHEDULE_TIMEOUT))
    if state is S.ASSIGNED and task.assign_ack is not None and task.assigned_at is not None:
        found.append((task.assigned_at + task.assign_ack, T.ACK_TIMEOUT))
    if state in _LIVE and task.start_to_close is not None and task.started_at is not None:
        found.append((task.started_at + task.start_to_close, T.TIME_OUT))
    if state in (S.ACCEPTED, *_LIVE) and task.heartbeat is not None and task.heard_at is not None:
        found.append((task.heard_at + task.heartbeat, T.LOSE))
    # Ties: the order above (schedule, ack, close, heartbeat) is the order of
    # precedence; sort is stable, so equal deadlines keep it.
    found.sort(key=lambda pair: pair[0])
    return found


def next_deadline(task: Task) -> float | None:
    """When the adapter's timer should next call :func:`expire_due` (``None``: no timer)."""
    found = _deadlines(task)
    return found[0][0] if found else None


def due(task: Task, now: float) -> Trigger | None:
    """The timeout that has run out at ``now`` (the earliest one), or ``None``."""
    found = _deadlines(task)
    if found and now >= found[0][0]:
        return found[0][1]
    return None


def expire_due(task: Task, now: float) -> tuple[Task, tuple[TaskEvent, ...]]:
    """Apply the timeouts that have run out by ``now``, each stamped at its deadline.

    The events carry the deadline, not ``now``: a timer that ran late does not
    make the record say the task ran longer than its limit allowed.
    """
    events: list[TaskEvent] = []
    # A step can make another deadline current (an ack timeout re-queues a task
    # whose schedule-to-start has also run out); each step either ends the task
    # or moves it back to ``queued``, whose only timeout is final, so this ends.
    while (found := _deadlines(task)) and now >= found[0][0]:
        deadline, trigger = found[0]
        task, step = apply(task, trigger, now=deadline)
        events.extend(step)
    return task, tuple(events)
