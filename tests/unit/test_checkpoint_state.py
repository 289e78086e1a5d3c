"""The checkpoint state machine (network-free): first answer wins, later ones are data."""

from __future__ import annotations

import itertools

import pytest

from starmux.checkpoint_state import (
    DECIDED,
    TRANSITIONS,
    Answer,
    Checkpoint,
    CheckpointState,
    Decide,
    TooLate,
    answer,
    transition,
)
from starmux.errors import UsageError


def pending(*, default_approve: bool = False) -> Checkpoint:
    return Checkpoint("c-1", "s-1", CheckpointState.PENDING, default_approve)


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        (Answer.APPROVE, CheckpointState.APPROVED),
        (Answer.DENY, CheckpointState.DENIED),
        (Answer.EXPIRE, CheckpointState.EXPIRED),
    ],
)
def test_the_first_answer_to_a_pending_checkpoint_decides_it(
    event: Answer, verdict: CheckpointState
) -> None:
    step = answer(pending(), event)
    assert step == Decide(pending(), verdict)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(sorted(DECIDED), Answer)))
def test_every_answer_to_a_decided_checkpoint_is_too_late(
    state: CheckpointState, event: Answer
) -> None:
    decided = Checkpoint("c-1", "s-1", state, False, b"k" * 32, 12.0)
    step = answer(decided, event)
    assert step == TooLate(decided, event)
    assert isinstance(step, TooLate) and step.previous is state


def test_the_table_has_exactly_the_three_first_answers() -> None:
    assert set(TRANSITIONS) == {(CheckpointState.PENDING, a) for a in Answer}
    for state, event in itertools.product(CheckpointState, Answer):
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[state, event]
        else:
            with pytest.raises(UsageError):
                transition(state, event)


@pytest.mark.parametrize(("default", "text"), [(False, "deny"), (True, "approve")])
def test_expiry_names_the_default_that_applies(default: bool, text: str) -> None:
    step = answer(pending(default_approve=default), Answer.EXPIRE)
    assert isinstance(step, Decide)
    assert step.reason_on_expiry == f"expired; default applied: {text}"


def test_the_stored_row_maps_to_a_state() -> None:
    assert Checkpoint.from_decision("c", "s", None, 0).state is CheckpointState.PENDING
    row = Checkpoint.from_decision("c", "s", "denied", 1, b"key", 3.0)
    assert (row.state, row.default_approve, row.decided_by, row.decided_at) == (
        CheckpointState.DENIED,
        True,
        b"key",
        3.0,
    )
    assert Checkpoint.from_decision("c", "s", "expired", 0, None).decided_by == b""
    with pytest.raises(ValueError):
        Checkpoint.from_decision("c", "s", "maybe", 0)
