"""A checkpoint's life as a state machine: first answer wins, later ones are data.

::

    pending ──approve──▶ approved
       │ ────deny─────▶ denied
       └────expire────▶ expired     (the expiry timer; its default then applies)

Invariants:

- A checkpoint is decided at most once: only ``pending`` has transitions, and the
  three decided states are final. :data:`TRANSITIONS` is the whole truth.
- An answer to a decided checkpoint is not an error of the answerer (it raced
  someone and lost): :func:`answer` returns :class:`TooLate`, naming what happened
  first, by whom and when, for the caller to report.
- :func:`answer` decides on what it is shown. The adapter must make the write it
  returns conditional on the state still being ``pending`` when the write lands
  (a guarded update in the same transaction); if the guard fails, it re-reads and
  asks again, which then yields :class:`TooLate`.
- :func:`transition` raises :class:`~starmux.errors.UsageError` for anything not in
  the table (a bug in our code, not the peer's).

No clock: expiry is an event the adapter feeds in when its timer fires.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import UsageError


class CheckpointState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class Answer(enum.StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    EXPIRE = "expire"


DECIDED = frozenset({CheckpointState.APPROVED, CheckpointState.DENIED, CheckpointState.EXPIRED})

TRANSITIONS: dict[tuple[CheckpointState, Answer], CheckpointState] = {
    (CheckpointState.PENDING, Answer.APPROVE): CheckpointState.APPROVED,
    (CheckpointState.PENDING, Answer.DENY): CheckpointState.DENIED,
    (CheckpointState.PENDING, Answer.EXPIRE): CheckpointState.EXPIRED,
}


def transition(current: CheckpointState, event: Answer) -> CheckpointState:
    new = TRANSITIONS.get((current, event))
    if new is None:
        raise UsageError(f"a checkpoint cannot {event.value} when {current.value}")
    return new


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the machine knows of a checkpoint (its stored row)."""

    id: str
    session: str
    state: CheckpointState
    default_approve: bool
    decided_by: bytes = b""  # the deciding controller's key; empty when it expired
    decided_at: float | None = None

    @classmethod
    def from_decision(
        cls,
        id: str,
        session: str,
        decision: str | None,
        default_approve: bool | int,
        decided_by: bytes | None = None,
        decided_at: float | None = None,
    ) -> Checkpoint:
        """From the stored row's columns (``decision`` NULL while pending)."""
        state = CheckpointState.PENDING if decision is None else CheckpointState(decision)
        return cls(id, session, state, bool(default_approve), decided_by or b"", decided_at)


@dataclass(frozen=True, slots=True)
class Decide:
    """Write this decision, guarded by "still pending"."""

    checkpoint: Checkpoint
    verdict: CheckpointState

    @property
    def reason_on_expiry(self) -> str:
        default = "approve" if self.checkpoint.default_approve else "deny"
        return f"expired; default applied: {default}"


@dataclass(frozen=True, slots=True)
class TooLate:
    """The answer came after the checkpoint was decided; nothing to write."""

    checkpoint: Checkpoint
    answer: Answer

    @property
    def previous(self) -> CheckpointState:
        return self.checkpoint.state


def answer(checkpoint: Checkpoint, event: Answer) -> Decide | TooLate:
    """The first answer to a pending checkpoint decides it; any other is too late."""
    if checkpoint.state in DECIDED:
        return TooLate(checkpoint, event)
    return Decide(checkpoint, transition(checkpoint.state, event))


__all__ = [
    "DECIDED",
    "TRANSITIONS",
    "Answer",
    "Checkpoint",
    "CheckpointState",
    "Decide",
    "TooLate",
    "answer",
    "transition",
]
