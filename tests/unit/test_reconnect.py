"""The reconnect policy (network-free): time and randomness are parameters."""

from __future__ import annotations

import itertools

import pytest

from starmux.close_codes import CloseCode
from starmux.errors import UsageError
from starmux.node.link import RelayClosedConnection, RelayUnreachable, connect_failure
from starmux.reconnect import (
    EVENT_OF,
    TRANSITIONS,
    Event,
    Forget,
    LinkFailure,
    LinkState,
    Reconnect,
    Retry,
    Stop,
    close_failure,
    transition,
)
from starmux.relay_auth import RelayKeyMismatch


def top(low: float, high: float) -> float:
    return high  # the largest delay full jitter may choose


def state_of(policy: Reconnect) -> LinkState:
    return policy.state


def connected() -> Reconnect:
    policy = Reconnect(base=0.5, cap=30.0, uniform=top)
    policy.connected()
    return policy


def test_an_outage_backs_off_exponentially_to_the_cap_and_a_connect_resets_it() -> None:
    policy = Reconnect(base=0.5, cap=30.0, uniform=top)
    delays = []
    for _ in range(9):
        step = policy.failed(LinkFailure.UNREACHABLE, now=0.0)
        assert isinstance(step, Retry) and state_of(policy) is LinkState.WAITING
        delays.append(step.delay)
        policy.retrying()
        assert state_of(policy) is LinkState.CONNECTING
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    policy.connected()
    assert policy.failed(LinkFailure.LOST, now=0.0) == Retry(0.5, LinkFailure.LOST)


def test_the_jitter_is_drawn_over_the_whole_window() -> None:
    draws: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        draws.append((low, high))
        return low

    policy = Reconnect(base=1.0, cap=4.0, uniform=record)
    for _ in range(4):
        assert policy.failed(LinkFailure.LOST, now=0.0) == Retry(0.0, LinkFailure.LOST)
        policy.retrying()
    assert draws == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 4.0)]


def test_a_restart_hint_is_honoured_once_then_refusals_retry_quickly() -> None:
    policy = connected()
    policy.restart_hint(3.0)
    assert policy.failed(LinkFailure.LOST, now=100.0) == Retry(3.5, LinkFailure.LOST, hinted=True)
    policy.retrying()
    # The relay is still down: nothing listens. Quick, flat retries for a window...
    for second in range(0, 60, 5):
        step = policy.failed(LinkFailure.REFUSED, now=103.0 + second)
        assert step == Retry(1.0, LinkFailure.REFUSED)
        policy.retrying()
    # ...after which it is an outage like any other: exponential again.
    assert policy.failed(LinkFailure.REFUSED, now=170.0) == Retry(0.5, LinkFailure.REFUSED)
    policy.retrying()
    assert policy.failed(LinkFailure.UNREACHABLE, now=171.0) == Retry(1.0, LinkFailure.UNREACHABLE)


def test_a_hint_does_not_outlive_the_loss_it_was_for() -> None:
    policy = connected()
    policy.restart_hint(3.0)
    assert policy.failed(LinkFailure.LOST, now=0.0).hinted  # type: ignore[union-attr]
    policy.retrying()
    policy.connected()
    assert policy.failed(LinkFailure.LOST, now=1.0) == Retry(0.5, LinkFailure.LOST)


def test_a_negative_hint_means_now() -> None:
    policy = connected()
    policy.restart_hint(-5.0)
    assert policy.failed(LinkFailure.LOST, now=0.0) == Retry(0.5, LinkFailure.LOST, hinted=True)


@pytest.mark.parametrize("while_connected", [False, True])
def test_revocation_forgets_the_identity_and_connects_again_at_once(while_connected: bool) -> None:
    policy = connected() if while_connected else Reconnect(uniform=top)
    policy.restart_hint(9.0)
    for _ in range(3):
        policy.backoff.next_delay()
    assert policy.failed(LinkFailure.REVOKED, now=0.0) == Forget()
    assert policy.state is LinkState.CONNECTING
    policy.connected()
    assert policy.failed(LinkFailure.LOST, now=0.0) == Retry(0.5, LinkFailure.LOST)


@pytest.mark.parametrize("failure", [LinkFailure.KEY_MISMATCH, LinkFailure.REFUSED_AS_REVOKED])
def test_the_relays_word_alone_is_retried_with_backoff(failure: LinkFailure) -> None:
    # A relay with another key, or one that says "revoked" without a controller's
    # signature: refused and retried, never the end of the daemon or its identity.
    policy = connected()
    assert policy.failed(failure, now=0.0) == Retry(0.5, failure)
    policy.retrying()
    assert policy.failed(failure, now=0.0) == Retry(1.0, failure)
    assert policy.state is LinkState.WAITING


@pytest.mark.parametrize("failure", [LinkFailure.REPLACED, LinkFailure.AUTH_FAILED])
def test_refused_for_good_stops_and_stays_stopped(failure: LinkFailure) -> None:
    policy = connected()
    assert policy.failed(failure, now=0.0) == Stop(failure)
    assert policy.state is LinkState.STOPPED
    with pytest.raises(UsageError):
        policy.retrying()
    with pytest.raises(UsageError):
        policy.connected()
    with pytest.raises(UsageError):
        policy.failed(LinkFailure.LOST, now=0.0)


def test_the_table_rejects_everything_it_does_not_list() -> None:
    assert set(EVENT_OF) == set(LinkFailure)
    for state, event in itertools.product(LinkState, Event):
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[state, event]
        else:
            with pytest.raises(UsageError):
                transition(state, event)
    assert not any(state is LinkState.STOPPED for state, _ in TRANSITIONS)
    waiting = Reconnect()
    waiting.failed(LinkFailure.LOST, now=0.0)
    with pytest.raises(UsageError):
        waiting.connected()  # connecting without the wait being over is a bug


@pytest.mark.parametrize(
    ("code", "connected", "failure"),
    [
        (CloseCode.REVOKED, False, LinkFailure.REFUSED_AS_REVOKED),
        (CloseCode.REVOKED, True, LinkFailure.REFUSED_AS_REVOKED),
        (CloseCode.REPLACED, True, LinkFailure.REPLACED),
        (CloseCode.AUTH_FAILED, True, LinkFailure.AUTH_FAILED),
        # While connecting, only a revocation is final: the rest is retried.
        (CloseCode.REPLACED, False, LinkFailure.LOST),
        (CloseCode.AUTH_FAILED, False, LinkFailure.LOST),
        (CloseCode.RESTARTING, True, LinkFailure.LOST),
        (CloseCode.FLOOD, True, LinkFailure.LOST),
        (CloseCode.TOO_MANY_CONNECTIONS, False, LinkFailure.LOST),
        (None, True, LinkFailure.LOST),
        (1006, True, LinkFailure.LOST),
    ],
)
def test_close_codes(code: int | None, connected: bool, failure: LinkFailure) -> None:
    assert close_failure(code, connected=connected) is failure


def _unreachable(cause: BaseException) -> RelayUnreachable:
    error = RelayUnreachable("cannot reach the relay")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (RelayKeyMismatch("the relay's key changed"), LinkFailure.KEY_MISMATCH),
        (RelayClosedConnection(CloseCode.REVOKED, "revoked"), LinkFailure.REFUSED_AS_REVOKED),
        (RelayClosedConnection(CloseCode.FLOOD, "slow down"), LinkFailure.LOST),
        (_unreachable(ConnectionRefusedError()), LinkFailure.REFUSED),
        (_unreachable(TimeoutError()), LinkFailure.UNREACHABLE),
        (OSError("network is unreachable"), LinkFailure.UNREACHABLE),
    ],
)
def test_what_a_failed_connect_means(exc: BaseException, failure: LinkFailure) -> None:
    assert connect_failure(exc) is failure
