"""When and whether a node reconnects to the relay: one policy as a state machine.

::

    connecting ──connected──▶ connected
        │ ▲                        │ lost (no code, a retryable code, refused...)
        │ └──────retry────── waiting ◀─┘
        ├──revoked (a controller-signed revoke, verified)──▶ connecting (new identity)
        └──replaced / auth failed──▶ stopped (never retried)

The relay's word alone is retried, never obeyed for good (issue 11.8, 13.2): close
4003 without a verified, controller-signed revocation (``refused-as-revoked``) and a
relay answering with another key than the pinned one (``key-mismatch``: refused,
never talked to) both wait with backoff, so the sessions keep running until the
pinned relay answers again or a person acts (``starmux relay repin``).

The adapter tells the policy what happened (:meth:`Reconnect.connected`,
:meth:`Reconnect.failed`, :meth:`Reconnect.retrying`, :meth:`Reconnect.restart_hint`)
and does what it answers: :class:`Retry` (sleep ``delay``, then call ``retrying``),
:class:`Forget` (drop the revoked identity, connect again now) or :class:`Stop`.

Invariants:

- :data:`TRANSITIONS` is the whole truth; anything else raises
  :class:`~starmux.errors.UsageError`. ``stopped`` is final.
- Delays: exponential with full jitter, capped, reset by a successful connect; a
  *refused* TCP connect (nothing listens: the relay is restarting) is retried
  within a second without growing the delay, for a bounded window
  (:meth:`~starmux.backoff.Backoff.after_refusal`); a restart notice's
  ``retry_after`` is honoured, jittered, once, for the next loss.
- Time (``now``) and randomness (``uniform``) are parameters: no clock, no I/O.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from .backoff import Backoff
from .close_codes import CloseCode
from .errors import UsageError


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    STOPPED = "stopped"


class LinkFailure(enum.StrEnum):
    """Why a connect attempt failed or a connection ended."""

    REFUSED = "refused"  # the TCP connect was refused: nothing listens (a restart)
    UNREACHABLE = "unreachable"  # any other connect failure (DNS, timeout, TLS...)
    LOST = "lost"  # the connection ended, or the relay closed it with a retryable code
    REVOKED = "revoked"  # a controller's signed revocation of this machine verified
    REFUSED_AS_REVOKED = "refused-as-revoked"  # the relay says revoked (4003), unproven
    REPLACED = "replaced"  # another node connected with this key
    AUTH_FAILED = "auth-failed"  # the relay refused our authentication
    KEY_MISMATCH = "key-mismatch"  # the relay is not the one we pinned


class Event(enum.StrEnum):
    CONNECTED = "connected"
    LOST = "lost"
    REVOKED = "revoked"
    REFUSED_FOR_GOOD = "refused-for-good"
    RETRY = "retry"


#: The kind of event each failure is, for the transition table.
EVENT_OF: dict[LinkFailure, Event] = {
    LinkFailure.REFUSED: Event.LOST,
    LinkFailure.UNREACHABLE: Event.LOST,
    LinkFailure.LOST: Event.LOST,
    LinkFailure.REVOKED: Event.REVOKED,
    LinkFailure.REFUSED_AS_REVOKED: Event.LOST,
    LinkFailure.REPLACED: Event.REFUSED_FOR_GOOD,
    LinkFailure.AUTH_FAILED: Event.REFUSED_FOR_GOOD,
    LinkFailure.KEY_MISMATCH: Event.LOST,
}

TRANSITIONS: dict[tuple[LinkState, Event], LinkState] = {
    (LinkState.CONNECTING, Event.CONNECTED): LinkState.CONNECTED,
    (LinkState.CONNECTING, Event.LOST): LinkState.WAITING,
    (LinkState.CONNECTING, Event.REVOKED): LinkState.CONNECTING,
    (LinkState.CONNECTING, Event.REFUSED_FOR_GOOD): LinkState.STOPPED,
    (LinkState.CONNECTED, Event.LOST): LinkState.WAITING,
    (LinkState.CONNECTED, Event.REVOKED): LinkState.CONNECTING,
    (LinkState.CONNECTED, Event.REFUSED_FOR_GOOD): LinkState.STOPPED,
    (LinkState.WAITING, Event.RETRY): LinkState.CONNECTING,
}


def transition(current: LinkState, event: Event) -> LinkState:
    new = TRANSITIONS.get((current, event))
    if new is None:
        raise UsageError(f"the relay link cannot go {event.value} when {current.value}")
    return new


def close_failure(code: int | None, *, connected: bool) -> LinkFailure:
    """What a close code from the relay means. Nothing here is final while still
    connecting (a busy relay, a timeout); 4003 is only the relay's word."""
    if code == CloseCode.REVOKED:
        return LinkFailure.REFUSED_AS_REVOKED
    if connected and code == CloseCode.REPLACED:
        return LinkFailure.REPLACED
    if connected and code == CloseCode.AUTH_FAILED:
        return LinkFailure.AUTH_FAILED
    return LinkFailure.LOST


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait ``delay`` seconds, then call :meth:`Reconnect.retrying` and connect."""

    delay: float
    failure: LinkFailure
    hinted: bool = False  # the delay is the relay's restart hint


@dataclass(frozen=True, slots=True)
class Forget:
    """The identity was revoked: drop it and connect again now, as a new one."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Never retry: the cause needs a person (see :class:`LinkFailure`)."""

    failure: LinkFailure


class Reconnect:
    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.backoff = Backoff(base=base, cap=cap, uniform=uniform)
        self.state = LinkState.CONNECTING
        self._hint: float | None = None

    def connected(self) -> None:
        self.state = transition(self.state, Event.CONNECTED)
        self.backoff.reset()

    def restart_hint(self, retry_after: float) -> None:
        """The relay announced a restart: come back after ``retry_after`` (next loss)."""
        self._hint = max(0.0, retry_after)

    def failed(self, failure: LinkFailure, *, now: float) -> Retry | Forget | Stop:
        """A connect attempt failed or the connection ended; what to do next."""
        self.state = transition(self.state, EVENT_OF[failure])
        if self.state is LinkState.STOPPED:
            return Stop(failure)
        if self.state is LinkState.CONNECTING:  # revoked
            self._hint = None
            self.backoff.reset()
            return Forget()
        if failure is LinkFailure.REFUSED:
            return Retry(self.backoff.after_refusal(now), failure)
        if self._hint is not None:
            hint, self._hint = self._hint, None
            return Retry(self.backoff.hinted_delay(hint), failure, hinted=True)
        return Retry(self.backoff.next_delay(), failure)

    def retrying(self) -> None:
        """The wait is over: connecting again."""
        self.state = transition(self.state, Event.RETRY)


__all__ = [
    "EVENT_OF",
    "TRANSITIONS",
    "Event",
    "Forget",
    "LinkFailure",
    "LinkState",
    "Reconnect",
    "Retry",
    "Stop",
    "close_failure",
    "transition",
]
