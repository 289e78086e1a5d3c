"""The controller's task book (issue 18): its outbox, placement and what machines report.

Sans-I/O glue between :mod:`starmux.task_state` and :mod:`starmux.placement`. The
adapter (the controller agent) feeds it submissions, the machines it knows, the
reports machines send and the time; it returns the assignments to send and the
:class:`~starmux.task_state.TaskEvent` records to store.

Invariants:

- A task waits in the outbox (``queued``) until a machine eligible for it is
  online; :meth:`TaskBook.place` assigns waiting tasks highest priority first,
  then oldest, and tasks submitted together (``--count N``) across distinct
  machines where possible. ``--machine NAME`` places only on that machine.
- A report about a task counts only if it comes from the machine the task is
  assigned to *and* names the current attempt: a late report of an earlier
  attempt, or one from any other machine, is ignored (returned as ``None``), so
  a compromised or confused machine cannot finish or lose another's task.
- A report that the table does not allow from the task's state is also
  ignored; machines are peers, their mistakes are not our bugs.
- A machine that refuses an attempt (:meth:`TaskBook.refuse`) is never offered
  that task again; the task goes to another machine that matches it (online now or
  not: one that is offline may take it when it returns), or ends ``failed`` with
  the refusal when none is left. A machine that let an attempt time out or lost it
  is only *avoided*: used again when no other is eligible.
- Everything time-driven goes through :meth:`TaskBook.expire`; nothing here
  reads a clock.
- The placement memory (round-robin cursor, the machine that last ran each cwd,
  each task's avoided and refusing machines) is plain data on the book, so the
  adapter can store it and :meth:`TaskBook.restore` it: an agent restart does not
  send a task back to the machine that just refused it, nor restart the rotation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UsageError
from .placement import Machine, Strategy, place
from .task_state import (
    MAX_REASON,
    TRANSITIONS,
    Task,
    TaskEvent,
    TaskState,
    Trigger,
    apply,
    expire_due,
    heard,
)

__all__ = ["MACHINE_REPORTS", "Assignment", "Spec", "TaskBook"]

#: What a machine may report about a task assigned to it (in the order
#: :func:`starmux.task_messages.trigger_for` tries them). The timeouts are the
#: controller's to decide, except start-to-close: the machine enforces it (it kills
#: the session), so a machine reports ``time_out``. A machine may cancel its own
#: task (a user there did), and report ``lose`` for a task it knows is gone (its
#: daemon restarted under it): waiting out the heartbeat would only delay that.
MACHINE_REPORTS = (
    Trigger.ACCEPT,
    Trigger.START,
    Trigger.AWAIT_APPROVAL,
    Trigger.RESUME,
    Trigger.SUCCEED,
    Trigger.FAIL,
    Trigger.CANCEL,
    Trigger.TIME_OUT,
    Trigger.LOSE,
)


@dataclass(frozen=True, slots=True)
class Spec:
    """Where a task may run and how to choose: a target of tags or one named machine."""

    cwd: str
    target: frozenset[str] = frozenset()
    machine: str | None = None
    strategy: Strategy = Strategy.LEAST_LOADED
    group: str = ""  # tasks of one ``--count N`` submission share it

    def __post_init__(self) -> None:
        if (self.machine is None) == (not self.target):
            raise UsageError("a task goes to one machine or to a set of tags, exactly one")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Send this attempt of this task to this machine."""

    task: str
    attempt: int
    machine: str


class TaskBook:
    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.specs: dict[str, Spec] = {}
        self.cursor: str | None = None  # round-robin state
        self.last_for_cwd: dict[str, str] = {}
        #: per task, machines to use only when no other is eligible (ack timeout, lost)
        self.avoid: dict[str, frozenset[str]] = {}
        #: per task, machines that refused it (never again), with their reason
        self.refused: dict[str, dict[str, str]] = {}

    def submit(self, task: Task, spec: Spec) -> None:
        if task.id in self.tasks:
            raise UsageError(f"task {task.id} was already submitted")
        if task.state is not TaskState.QUEUED:
            raise UsageError("a task is submitted queued")
        self.tasks[task.id] = task
        self.specs[task.id] = spec

    def restore(
        self,
        task: Task,
        spec: Spec,
        *,
        avoid: Iterable[str] = (),
        refused: dict[str, str] | None = None,
    ) -> None:
        """Take back a task the adapter stored (any state), e.g. after a restart."""
        self.tasks[task.id] = task
        self.specs[task.id] = spec
        if avoid:
            self.avoid[task.id] = frozenset(avoid)
        if refused:
            self.refused[task.id] = dict(refused)

    def _record(self, task: Task, events: tuple[TaskEvent, ...]) -> tuple[TaskEvent, ...]:
        previous = self.tasks[task.id]
        if previous.machine is not None and task.attempt > previous.attempt:
            # The next attempt should go elsewhere if it can.
            avoid = self.avoid.get(task.id, frozenset())
            self.avoid[task.id] = avoid | {previous.machine}
        self.tasks[task.id] = task
        return events

    def place(
        self, machines: Iterable[Machine], *, now: float
    ) -> tuple[list[Assignment], list[TaskEvent]]:
        """Assign every waiting task that has an eligible online machine."""
        known = {m.id: m for m in machines}
        waiting = sorted(
            (t for t in self.tasks.values() if t.state is TaskState.QUEUED),
            key=lambda t: (-t.priority, t.scheduled_at, t.id),
        )
        assignments: list[Assignment] = []
        events: list[TaskEvent] = []
        done: set[str] = set()
        for first in waiting:
            if first.id in done:
                continue
            spec = self.specs[first.id]
            siblings = [
                t
                for t in waiting
                if t.id not in done and spec.group and self.specs[t.id].group == spec.group
            ] or [first]
            if spec.machine is not None:
                pool = [known[spec.machine]] if spec.machine in known else []
                target: frozenset[str] = frozenset()
            else:
                pool, target = list(known.values()), spec.target
            result = place(
                pool,
                target,
                strategy=spec.strategy,
                count=len(siblings),
                cursor=self.cursor,
                last_for_cwd=self.last_for_cwd.get(spec.cwd),
                avoid=self.avoid.get(first.id, frozenset()),
                exclude=frozenset(self.refused.get(first.id, {})),
            )
            self.cursor = result.cursor
            for task, machine in zip(siblings, result.machines, strict=False):
                done.add(task.id)
                after, step = apply(task, Trigger.ASSIGN, now=now, machine=machine)
                events += self._record(after, step)
                assignments.append(Assignment(task.id, after.attempt, machine))
                # Count it at once, so the next group sees the machine busier.
                known[machine] = dataclasses.replace(
                    known[machine], queued=known[machine].queued + 1
                )
            done.update(t.id for t in siblings)
        return assignments, events

    def report(
        self,
        machine: str,
        task_id: str,
        attempt: int,
        trigger: Trigger,
        *,
        now: float,
        exit_code: int | None = None,
    ) -> tuple[TaskEvent, ...] | None:
        """A machine's report about a task; ``None`` when it does not count."""
        task = self.tasks.get(task_id)
        if (
            task is None
            or trigger not in MACHINE_REPORTS
            or task.machine != machine
            or task.attempt != attempt
            or (task.state, trigger) not in TRANSITIONS
        ):
            return None
        after, events = apply(task, trigger, now=now, exit_code=exit_code)
        if trigger is Trigger.START:
            self.last_for_cwd[self.specs[task_id].cwd] = machine
        after = heard(after, now)
        return self._record(after, events)

    def refuse(
        self,
        machine: str,
        task_id: str,
        attempt: int,
        reason: str,
        *,
        machines: Iterable[Machine],
        now: float,
    ) -> tuple[TaskEvent, ...] | None:
        """``machine`` refused this attempt (its ack said no); ``machines`` are all
        the controller knows, online or not. ``None`` when the refusal does not
        count (not this machine's attempt, or it was not waiting for an answer)."""
        task = self.tasks.get(task_id)
        if (
            task is None
            or task.machine != machine
            or task.attempt != attempt
            or task.state is not TaskState.ASSIGNED
        ):
            return None
        refused = {**self.refused.get(task_id, {}), machine: reason[:MAX_REASON]}
        self.refused[task_id] = refused
        spec = self.specs[task_id]
        elsewhere = any(
            m.id not in refused
            and (m.id == spec.machine if spec.machine is not None else spec.target <= m.tags)
            for m in machines
        )
        after, events = apply(task, Trigger.REFUSE, now=now, reason=reason, elsewhere=elsewhere)
        return self._record(after, events)

    def heard_from(self, machine: str, *, now: float) -> None:
        """The machine is alive: every task it holds is heard from."""
        for task_id, task in self.tasks.items():
            if task.machine == machine:
                self.tasks[task_id] = heard(task, now)

    def cancel(self, task_id: str, *, now: float) -> tuple[TaskEvent, ...]:
        """Withdraw or cancel (the adapter tells the machine when it had the task)."""
        task = self.tasks.get(task_id)
        if task is None:
            raise UsageError(f"no task {task_id}")
        after, events = apply(task, Trigger.CANCEL, now=now)
        return self._record(after, events)

    def expire(self, *, now: float) -> list[TaskEvent]:
        """Apply every timeout that has run out by ``now``."""
        events: list[TaskEvent] = []
        for task in list(self.tasks.values()):
            after, step = expire_due(task, now)
            if step:
                events += self._record(after, step)
        return events
