"""The event loop of the long-lived processes: the machine daemon and the controller
agent (and the benchmarks that stand in for them).

uvloop where it is installed (a dependency everywhere but Windows), else asyncio's
own. Their hot paths are many small steps through the loop (a frame read, a page
sealed, a commit, a wake-up): with 100 machines streaming, uvloop carried 23% more
events per second end to end than the default loop, and cut the controller's CPU
per event by 15% (issue 20, ``python -m bench.e2e``). Short CLI commands keep
``asyncio.run``: they spend their time starting Python, not in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..collector import settle_collector

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when it is there, with the cycle collector
    settled (:mod:`starmux.collector`)."""
    settle_collector()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or a trimmed install
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
