"""The session status table: every legal transition works, every other one raises."""

from __future__ import annotations

import itertools

import pytest

from starmux.errors import UsageError
from starmux.session_state import TERMINAL, TRANSITIONS, Status, transition

LEGAL = {
    (Status.QUEUED, Status.RUNNING),
    (Status.QUEUED, Status.FAILED),
    (Status.QUEUED, Status.CANCELLED),
    (Status.QUEUED, Status.LOST),
    (Status.RUNNING, Status.WAITING_APPROVAL),
    (Status.RUNNING, Status.SUCCEEDED),
    (Status.RUNNING, Status.FAILED),
    (Status.RUNNING, Status.CANCELLED),
    (Status.RUNNING, Status.LOST),
    (Status.WAITING_APPROVAL, Status.RUNNING),
    (Status.WAITING_APPROVAL, Status.SUCCEEDED),
    (Status.WAITING_APPROVAL, Status.FAILED),
    (Status.WAITING_APPROVAL, Status.CANCELLED),
    (Status.WAITING_APPROVAL, Status.LOST),
}
PAIRS = list(itertools.product(Status, Status))


def test_the_table_is_the_documented_one() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL))
def test_every_legal_transition_is_allowed(current: Status, new: Status) -> None:
    assert transition(current, new) is new


@pytest.mark.parametrize(("current", "new"), [p for p in PAIRS if p not in LEGAL])
def test_every_illegal_transition_raises(current: Status, new: Status) -> None:
    with pytest.raises(UsageError, match=f"from {current.value} to {new.value}"):
        transition(current, new)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_a_terminal_status_never_changes(status: Status) -> None:
    assert TRANSITIONS[status] == frozenset()
