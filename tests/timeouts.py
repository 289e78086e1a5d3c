"""Every wait in the suite, on one scale: ``STARMUX_TEST_TIMEOUT_FACTOR``.

A bound on a wait for something that *must* happen (a frame, a line, a process
exit) only decides how long a broken test takes to fail, so it can be generous; on
a slow or loaded machine (CI, a laptop on battery, a sanitizer build) set the factor
to stretch all of them at once, e.g. ``STARMUX_TEST_TIMEOUT_FACTOR=3`` (the way
websockets' tests read ``WEBSOCKETS_TESTS_TIMEOUT_FACTOR``). pytest-timeout's
per-test limit follows the same factor (``tests/conftest.py``).

Waits that check something does *not* happen (no frame within 0.3 s) are not
scaled: a longer one would only make the suite slower, never more right.

:func:`poll` and :func:`poll_async` are the suite's one way to wait for a condition
that has no event to await (another process's state seen through its CLI).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _factor() -> float:
    text = os.environ.get("STARMUX_TEST_TIMEOUT_FACTOR", "1")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"STARMUX_TEST_TIMEOUT_FACTOR must be a positive number, not {text!r}")
    return value


FACTOR = _factor()


def scaled(seconds: float) -> float:
    """``seconds`` on this machine's scale."""
    return seconds * FACTOR


#: A frame, a line of output, an ack: instant unless something is broken.
EVENT = scaled(10.0)
#: A process start (a relay, a daemon), a subprocess's stream to drain.
START = scaled(20.0)
#: A whole CLI command in a subprocess.
COMMAND = scaled(60.0)


def poll(probe: Callable[[], T | None], *, within: float, what: str, every: float = 0.05) -> T:
    """Call ``probe`` until it returns something other than None and return that.

    ``within`` is in unscaled seconds; after ``scaled(within)`` the wait fails with
    an AssertionError naming ``what``. The probe runs at least once, and the
    deadline is only checked after a probe that found nothing.
    """
    deadline = time.monotonic() + scaled(within)
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {scaled(within):.1f} s")
        time.sleep(every)


async def poll_async(
    probe: Callable[[], Awaitable[T | None]], *, within: float, what: str, every: float = 0.05
) -> T:
    """:func:`poll` for a coroutine probe, sleeping without blocking the loop."""
    deadline = time.monotonic() + scaled(within)
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {scaled(within):.1f} s")
        await asyncio.sleep(every)
