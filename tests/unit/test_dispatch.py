"""The controller's task book, network-free: the issue 18 scenarios at the core level
(fan-out, priorities, outbox, expiry, lost with and without retry, affinity), and
reports that must not count (late attempts, other machines, illegal steps)."""

from __future__ import annotations

import pytest

from starmux.dispatch import Assignment, Spec, TaskBook
from starmux.errors import UsageError
from starmux.placement import Machine, Strategy
from starmux.task_state import Task, TaskState, Trigger

S, T = TaskState, Trigger
GPU = frozenset({"gpu"})


def gpus(*, b_online: bool = True) -> list[Machine]:
    return [Machine("a", GPU), Machine("b", GPU, online=b_online), Machine("cpu")]


def submit(book: TaskBook, task_id: str, spec: Spec | None = None, **task: object) -> None:
    book.submit(
        Task(task_id, scheduled_at=float(task.pop("at", 0.0)), **task),  # type: ignore[arg-type]
        spec or Spec("/w", target=GPU),
    )


def run(book: TaskBook, task_id: str, now: float) -> None:
    task = book.tasks[task_id]
    assert task.machine is not None
    for trigger in (T.ACCEPT, T.START):
        assert book.report(task.machine, task_id, task.attempt, trigger, now=now) is not None


def test_fan_out_goes_to_distinct_machines_then_wraps() -> None:
    book = TaskBook()
    for i in range(3):
        submit(book, f"t{i}", Spec("/w", target=GPU, group="g1"))
    assignments, events = book.place(gpus(), now=1.0)
    assert assignments == [
        Assignment("t0", 1, "a"),
        Assignment("t1", 1, "b"),
        Assignment("t2", 1, "a"),
    ]
    assert [e.new for e in events] == [S.ASSIGNED] * 3


def test_the_outbox_places_the_highest_priority_first() -> None:
    book = TaskBook()
    submit(book, "early-low", at=1.0)
    submit(book, "late-high", at=2.0, priority=5)
    assignments, _ = book.place([Machine("a", GPU)], now=3.0)
    assert [a.task for a in assignments] == ["late-high", "early-low"]


def test_a_task_waits_for_its_machine_and_is_placed_when_it_comes_back() -> None:
    book = TaskBook()
    submit(book, "t1", Spec("/w", machine="b"))
    assert book.place(gpus(b_online=False), now=1.0) == ([], [])
    assert book.tasks["t1"].state is S.QUEUED
    assignments, _ = book.place(gpus(), now=50.0)
    assert assignments == [Assignment("t1", 1, "b")]


def test_a_target_nobody_has_expires_after_schedule_to_start() -> None:
    book = TaskBook()
    submit(book, "t1", Spec("/w", target=frozenset({"tpu"})), schedule_to_start=1.0)
    assert book.place(gpus(), now=0.5) == ([], [])
    assert book.expire(now=1.0 - 2**-10) == []
    (event,) = book.expire(now=1.0)
    assert (event.new, event.at) == (S.EXPIRED, 1.0)


@pytest.mark.parametrize("retry", [False, True])
def test_a_lost_task_reruns_elsewhere_only_with_retry_on_lost(retry: bool) -> None:
    book = TaskBook()
    submit(book, "t1", retry_on_lost=retry, heartbeat=2.0)
    book.place(gpus(), now=0.0)
    run(book, "t1", now=1.0)
    book.heard_from("a", now=3.0)
    assert book.expire(now=5.0 - 2**-10) == []
    events = book.expire(now=5.0)
    assert events[0].new is S.LOST and events[0].machine == "a"
    assignments, _ = book.place(gpus(), now=6.0)
    if retry:
        assert assignments == [Assignment("t1", 2, "b")]  # not back to the machine that lost it
    else:
        assert assignments == [] and book.tasks["t1"].state is S.LOST


def test_an_unacknowledged_assignment_goes_to_another_machine() -> None:
    book = TaskBook()
    submit(book, "t1", assign_ack=1.0)
    assert book.place(gpus(), now=0.0)[0] == [Assignment("t1", 1, "a")]
    book.expire(now=1.0)
    assert book.place(gpus(), now=2.0)[0] == [Assignment("t1", 2, "b")]
    # A late accept of attempt 1 from a no longer counts.
    assert book.report("a", "t1", 1, T.ACCEPT, now=3.0) is None
    assert book.tasks["t1"].state is S.ASSIGNED


def test_reports_from_other_machines_or_out_of_order_do_not_count() -> None:
    book = TaskBook()
    submit(book, "t1")
    book.place(gpus(), now=0.0)
    assert book.report("b", "t1", 1, T.ACCEPT, now=1.0) is None  # not its machine
    assert book.report("a", "t1", 1, T.SUCCEED, now=1.0) is None  # not started
    assert book.report("a", "t1", 1, T.LOSE, now=1.0) is None  # assigned: nothing to lose
    assert book.report("a", "t1", 1, T.SCHEDULE_TIMEOUT, now=1.0) is None  # the controller's
    assert book.report("a", "t1", 1, T.ACK_TIMEOUT, now=1.0) is None
    assert book.report("a", "nope", 1, T.ACCEPT, now=1.0) is None
    assert book.tasks["t1"].state is S.ASSIGNED
    run(book, "t1", now=2.0)
    events = book.report("a", "t1", 1, T.SUCCEED, now=3.0, exit_code=0)
    assert events is not None and events[0].new is S.SUCCEEDED
    assert book.tasks["t1"].exit_code == 0


def test_affinity_returns_to_the_machine_that_ran_the_cwd() -> None:
    book = TaskBook()
    affine = Spec("/repo", target=GPU, strategy=Strategy.AFFINITY)
    submit(book, "first", Spec("/repo", machine="b"))
    book.place(gpus(), now=0.0)
    run(book, "first", now=1.0)
    submit(book, "second", affine)
    busy = [Machine("a", GPU), Machine("b", GPU, running=1)]
    assert book.place(busy, now=2.0)[0] == [Assignment("second", 1, "b")]


def test_round_robin_alternates_across_submissions() -> None:
    book = TaskBook()
    machines = gpus()
    picks = []
    for i in range(4):
        submit(book, f"t{i}", Spec("/w", target=GPU, strategy=Strategy.ROUND_ROBIN))
        picks += [a.machine for a in book.place(machines, now=float(i))[0]]
    assert picks == ["a", "b", "a", "b"]


def test_cancel_withdraws_a_queued_task_and_misuse_raises() -> None:
    book = TaskBook()
    submit(book, "t1")
    (event,) = book.cancel("t1", now=1.0)
    assert event.new is S.CANCELLED
    assert book.place(gpus(), now=2.0) == ([], [])
    with pytest.raises(UsageError):
        book.cancel("t1", now=3.0)
    with pytest.raises(UsageError):
        submit(book, "t1")
    with pytest.raises(UsageError):
        Spec("/w")  # neither a machine nor tags


# --- refusals (issue 18 gap: a refusal was treated as no answer) ------------------------


def test_a_refused_task_goes_to_another_machine_and_never_back() -> None:
    book = TaskBook()
    submit(book, "t1")
    (first,), _ = book.place(gpus(), now=1.0)
    events = book.refuse(first.machine, "t1", 1, "role viewer", machines=gpus(), now=2.0)
    assert events is not None and events[0].trigger is T.REFUSE
    assert events[0].reason == "role viewer" and book.tasks["t1"].state is S.QUEUED
    (second,), _ = book.place(gpus(), now=2.5)
    assert second.machine != first.machine and second.attempt == 2
    # The other one refuses too: none is left that matches, so it fails with the words.
    events = book.refuse(second.machine, "t1", 2, "queue full", machines=gpus(), now=3.0)
    failed = book.tasks["t1"]
    assert events is not None and failed.state is S.FAILED
    assert failed.reason == "queue full (no other machine can take it)"


def test_a_refused_task_waits_for_an_unrefused_machine_that_is_offline() -> None:
    book = TaskBook()
    submit(book, "t1")
    book.place(gpus(b_online=False), now=1.0)
    book.refuse("a", "t1", 1, "no", machines=gpus(b_online=False), now=2.0)
    assert book.place(gpus(b_online=False), now=3.0) == ([], [])  # not back to a
    assert book.tasks["t1"].state is S.QUEUED
    (placed,), _ = book.place(gpus(), now=4.0)
    assert placed.machine == "b"


def test_a_refusal_of_a_one_machine_task_fails_it() -> None:
    book = TaskBook()
    submit(book, "t1", Spec("/w", machine="a"))
    book.place(gpus(), now=1.0)
    book.refuse("a", "t1", 1, "role viewer may not run", machines=gpus(), now=2.0)
    assert book.tasks["t1"].state is S.FAILED


def test_a_refusal_that_does_not_count() -> None:
    book = TaskBook()
    submit(book, "t1")
    book.place(gpus(), now=1.0)
    other = "b" if book.tasks["t1"].machine == "a" else "a"
    assert book.refuse(other, "t1", 1, "no", machines=gpus(), now=2.0) is None
    assert (
        book.refuse(book.tasks["t1"].machine or "", "t1", 7, "no", machines=gpus(), now=2.0) is None
    )
    assert book.tasks["t1"].state is S.ASSIGNED and "t1" not in book.refused
