"""Shared test configuration: the hypothesis profile every run uses, and the
per-test time limit on the suite's one timeout scale (tests/timeouts.py)."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from .timeouts import FACTOR, scaled

# "ci": enough examples to find something, still randomised (no derandomize: each run
# explores new inputs, and a failure prints the seed to reproduce it). No deadline:
# a single example that signs, verifies or packs 64 KiB can exceed 200 ms on a
# loaded machine, and a flaky timing failure teaches nothing.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Scale pytest-timeout's per-test limit from pyproject.toml by the suite's factor
    (before pytest-timeout reads it); an explicit --timeout or PYTEST_TIMEOUT wins."""
    if config.getoption("timeout", None) is None and "PYTEST_TIMEOUT" not in os.environ:
        ini = config.getini("timeout")
        if ini:
            config.option.timeout = scaled(float(ini))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test's own ``@pytest.mark.timeout(N)`` follows the factor too."""
    if FACTOR == 1:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args:
            limit = scaled(float(marker.args[0]))
            item.add_marker(pytest.mark.timeout(limit, *marker.args[1:], **marker.kwargs), False)
