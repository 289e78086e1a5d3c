"""Reconnect delays: exponential with full jitter, capped; quick retries while the
relay restarts (connection refused), for a bounded time."""

from __future__ import annotations

from starmux.backoff import Backoff


def _top(low: float, high: float) -> float:
    return high  # the largest delay full jitter may choose


def test_delays_grow_exponentially_to_the_cap_and_reset() -> None:
    backoff = Backoff(base=0.5, cap=30.0, uniform=_top)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert max(delays) == 30.0
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_full_jitter_draws_from_zero() -> None:
    calls: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        calls.append((low, high))
        return low

    Backoff(base=1.0, uniform=record).next_delay()
    assert calls == [(0.0, 1.0)]


def test_refusals_retry_quickly_without_escalating_then_fall_back() -> None:
    backoff = Backoff(base=0.5, cap=30.0, uniform=_top)
    for second in range(0, 59, 5):
        assert backoff.after_refusal(float(second)) == 1.0
    assert backoff.attempt == 0  # refusals inside the window do not grow the delay
    assert backoff.after_refusal(61.0) == 0.5  # an outage now: exponential again
    assert backoff.after_refusal(62.0) == 1.0
    backoff.reset()
    assert backoff.after_refusal(100.0) == 1.0  # a new window after a success


def test_restart_hint_is_honoured_with_a_little_jitter() -> None:
    assert Backoff(base=0.5, uniform=_top).hinted_delay(3.0) == 3.5
