"""Task messages (issue 18) on the :data:`~starmux.messages.APP` codec: what a controller
sends to assign or cancel a task, what a machine reports about it and about its load.

Importing this module registers them. The shapes:

- ``assign-task`` (:class:`AssignTask`), a command (body of a ``command`` envelope,
  so its ack and once-only delivery are the command's): store this attempt of
  this task in your durable queue. The ack's ``result`` names the task's state
  on the machine (``accepted``, or where a duplicate already is).
- ``cancel-task`` (:class:`CancelTask`), a command: cancel this attempt.
- ``task-progress`` (:class:`TaskProgress`), a logged event from the machine: the
  attempt reached a state the machine decides (accepted … final).
- ``set-tags`` (:class:`SetTags`), a command: add and remove tags of the machine
  (``starmux machines tag``); the machine keeps its tags and reports the new set
  in a ``machine-load`` event. The ack's ``result`` is the new set, comma-joined.
- ``machine-load`` (:class:`MachineLoad`), sent by the machine on connect and on
  every change of its tags, capacity or load: what placement reads.

Everything a machine says is hostile until checked: ids match
:data:`~starmux.messages.ID_PATTERN`, states are only those a machine may report,
tags parse, and counts lie in bounded ranges; the checks run in ``__post_init__``
so a message failing them does not decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from .codec import Message, Range
from .dispatch import MACHINE_REPORTS
from .errors import UsageError
from .messages import APP, check_id
from .placement import MAX_CAPACITY, MAX_TAGS, Machine, parse_tag
from .task_state import TRANSITIONS, TaskState, Trigger

__all__ = [
    "MACHINE_STATES",
    "AssignTask",
    "CancelTask",
    "MachineLoad",
    "SetTags",
    "TaskProgress",
    "trigger_for",
]

Attempt = Annotated[int, Range(1, 1_000_000)]
Priority = Annotated[int, Range(-1000, 1000)]
Count = Annotated[int, Range(0, 1_000_000)]
Capacity = Annotated[int, Range(1, MAX_CAPACITY)]
Seconds = Annotated[float, Range(0.001, 366 * 24 * 3600.0)]

#: The states a machine's report may name: those its triggers lead to.
MACHINE_STATES = frozenset(
    new for (_, trigger), new in TRANSITIONS.items() if trigger in MACHINE_REPORTS
)


@APP.register
@dataclass(frozen=True)
class AssignTask(Message):
    KIND = "assign-task"
    task: str
    attempt: Attempt
    priority: Priority
    argv: tuple[str, ...]
    cwd: str
    title: str
    env: dict[str, str]
    pty: bool
    start_to_close: Seconds | None

    def __post_init__(self) -> None:
        check_id(self.task, "task id")
        if not self.argv:
            raise UsageError("a task needs a command")


@APP.register
@dataclass(frozen=True)
class CancelTask(Message):
    KIND = "cancel-task"
    task: str
    attempt: Attempt

    def __post_init__(self) -> None:
        check_id(self.task, "task id")


@APP.register
@dataclass(frozen=True)
class TaskProgress(Message):
    KIND = "task-progress"
    task: str
    attempt: Attempt
    state: TaskState
    session: str | None
    exit_code: int | None

    def __post_init__(self) -> None:
        check_id(self.task, "task id")
        if self.session is not None:
            check_id(self.session, "session id")
        if self.state not in MACHINE_STATES:
            raise UsageError(f"a machine does not report a task {self.state.value}")


@APP.register
@dataclass(frozen=True)
class SetTags(Message):
    KIND = "set-tags"
    add: tuple[str, ...]
    remove: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.add) + len(self.remove) > MAX_TAGS:
            raise UsageError(f"a machine carries at most {MAX_TAGS} tags")
        if not self.add and not self.remove:
            raise UsageError("set-tags names at least one tag")
        for tag in (*self.add, *self.remove):
            parse_tag(tag)


@APP.register
@dataclass(frozen=True)
class MachineLoad(Message):
    KIND = "machine-load"
    tags: tuple[str, ...]
    capacity: Capacity
    running: Count
    queued: Count

    def __post_init__(self) -> None:
        if len(self.tags) > MAX_TAGS:
            raise UsageError(f"a machine carries at most {MAX_TAGS} tags")
        for tag in self.tags:
            parse_tag(tag)

    def machine(self, machine_id: str, *, online: bool) -> Machine:
        """As placement sees it."""
        return Machine(
            machine_id, frozenset(self.tags), self.capacity, self.running, self.queued, online
        )


def trigger_for(current: TaskState, reported: TaskState) -> Trigger | None:
    """The machine trigger that takes a task from ``current`` to ``reported``, if any
    (``running`` is a start from ``accepted`` and a resume after an approval)."""
    for trigger in MACHINE_REPORTS:
        if TRANSITIONS.get((current, trigger)) is reported:
            return trigger
    return None
