"""The suite's one timeout scale and its one poller (tests/timeouts.py)."""

from __future__ import annotations

import itertools
import os

import pytest

from .. import timeouts


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "fast", ""])
def test_a_bad_factor_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("STARMUX_TEST_TIMEOUT_FACTOR", text)
    with pytest.raises(ValueError, match="STARMUX_TEST_TIMEOUT_FACTOR"):
        timeouts._factor()


def test_the_factor_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARMUX_TEST_TIMEOUT_FACTOR", "2.5")
    assert timeouts._factor() == 2.5
    monkeypatch.setattr(timeouts, "FACTOR", 2.5)
    assert timeouts.scaled(4) == 10.0


def test_pytest_timeout_follows_the_factor(pytestconfig: pytest.Config) -> None:
    args = pytestconfig.invocation_params.args
    explicit = any(str(a).startswith("--timeout") for a in args) or "PYTEST_TIMEOUT" in os.environ
    expected = timeouts.scaled(float(pytestconfig.getini("timeout")))
    assert explicit or pytestconfig.option.timeout == expected


def test_poll_returns_the_first_answer() -> None:
    calls = itertools.count()
    assert timeouts.poll(lambda: 7 if next(calls) == 3 else None, within=5, what="x", every=0) == 7


def test_poll_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the moon"):
        timeouts.poll(lambda: None, within=0.05, what="the moon", every=0.01)


async def test_poll_async() -> None:
    calls = itertools.count()

    async def probe() -> str | None:
        return "ok" if next(calls) == 2 else None

    assert await timeouts.poll_async(probe, within=5, what="x", every=0) == "ok"
    with pytest.raises(AssertionError, match="never"):
        await timeouts.poll_async(_nothing, within=0.05, what="never", every=0.01)


async def _nothing() -> None:
    return None


@pytest.mark.timeout(7)
def test_a_tests_own_limit_follows_the_factor(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args[0] == timeouts.scaled(7)
