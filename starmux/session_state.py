"""Session status as a state machine: the table below is the whole truth.

::

    queued ──▶ running ⇄ waiting_approval
       │          │            │
       ▼          ▼            ▼
     failed   succeeded | failed | cancelled | lost

- ``lost``: the daemon restarted and found the session's process gone; it is
  reported, never silently dropped.
- A terminal status never changes again; an illegal transition raises
  :class:`~starmux.errors.UsageError` (a bug in our code, not the peer's).
"""

from __future__ import annotations

import enum

from .errors import UsageError


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.LOST})
_ENDINGS = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.LOST})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED, Status.LOST}),
    Status.RUNNING: frozenset({Status.WAITING_APPROVAL}) | _ENDINGS,
    Status.WAITING_APPROVAL: frozenset({Status.RUNNING}) | _ENDINGS,
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.LOST: frozenset(),
}


def transition(current: Status, new: Status) -> Status:
    if new not in TRANSITIONS[current]:
        raise UsageError(f"a session cannot go from {current.value} to {new.value}")
    return new
