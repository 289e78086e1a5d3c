"""``starmux tasks --watch`` inside the controller agent (issue 18): the listed tasks
as they are, then every transition as the task book stores it, streamed to the
command until every listed task has ended.

Invariants:

- Nothing is polled: the watch waits on an event the book's adapter sets after each
  stored step (:attr:`~.fleet.Fleet.followers`), then reads the transitions stored
  since the last one it sent (``task_events`` rowids, in order). A step stored while
  the watch is sending is not missed: the event is set before the read, cleared
  before it, and the read covers everything up to now.
- Every transition is sent, in the order it was stored, even when several happen
  between two wake-ups (accepted → running in one tick): the command prints each.
- Listed tasks are the ones matching the state filter when the watch began; with
  no filter, tasks submitted while it runs are listed as they appear.
- It ends when every listed task is in a final state (at once, if they all are).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .fleet import Fleet

__all__ = ["follow"]


async def follow(fleet: Fleet, *, state: str = "") -> AsyncIterator[dict[str, Any]]:
    """Items for the command: ``{"task": view}`` for each listed task now, then
    ``{"task": view, "event": transition}`` for each transition after."""
    await fleet.loaded.wait()
    changed = asyncio.Event()
    fleet.followers.add(changed)
    try:
        async with fleet._lock:  # one consistent start: the book and the last stored row
            listed = {i for i, t in fleet.book.tasks.items() if not state or t.state == state}
            after = await fleet.store.last_event()
            first = await fleet.views([i for i in fleet.book.tasks if i in listed])
        for view in first:
            yield {"task": view}
        while not all(fleet.book.tasks[i].final for i in listed):
            await changed.wait()
            changed.clear()
            while events := await fleet.store.events_after(after):
                after = events[-1]["rowid"]
                if not state:
                    listed.update(e["task"] for e in events)
                for event in await fleet.named([e for e in events if e["task"] in listed]):
                    del event["rowid"]
                    (view,) = await fleet.views([event["task"]])
                    yield {"task": view, "event": event}
    finally:
        fleet.followers.discard(changed)
