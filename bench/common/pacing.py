"""The paced senders of the benchmarks: woken only when a message is due."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

#: The shortest sleep between sends (the old fixed tick): uvloop rounds timers to
#: whole milliseconds, so a shorter one would wake early and spin.
MIN_SLEEP = 0.001


async def paced(rate: float, seconds: float) -> AsyncIterator[int]:
    """For ``seconds``, yield how many messages are due at ``rate`` per second, then
    sleep until the next one is. (A fixed 1 ms tick woke every load process a
    thousand times a second whatever its share of the rate: with 4 daemon processes
    at 250 events/s each, 0.2 cores of wake-ups charged to the daemons and taken from
    the processes measured.)"""
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            sent += due
            yield due
        wait = (sent + 1) / rate - (time.monotonic() - start)
        await asyncio.sleep(max(MIN_SLEEP, wait))
