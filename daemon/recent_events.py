"""The newest committed events of the log, kept in memory to answer sync requests.

A controller that falls behind a busy machine by more than its live window pages
through the log with sync requests (:mod:`starmux.resync`), and what it asks for is
almost always what was committed a moment ago. Each answer read from SQLite costs a
hop to the reader's thread and back, and a query, for one page of a few dozen
events; with a hundred machines paging at once that was the largest share of a
daemon's cost per event (issue 20). The events are still in memory when they
commit, so the log keeps the newest of them here and answers from them.

Invariants:

- What is held is a run of committed events with consecutive seqs ending at the
  log's last seq: the log adds every commit's events, in order, and nothing else
  (a commit that does not follow what is held replaces it).
  Seqs are gapless and never reused, and events are never changed or deleted
  while the log is open, so an answer from here equals the one SQLite would give.
- A read that starts before the oldest event held is not answered here (``None``):
  the caller reads SQLite. Nothing older is ever guessed at.
- At most ``max_bytes`` are held (bodies and session ids, plus a fixed allowance
  per event for the objects), dropped oldest first; one commit bigger than that is
  held only in its newest events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from starmux.errors import UsageError
from starmux.live_window import Costed
from starmux.resync import first_page

__all__ = ["EVENT_OVERHEAD", "RecentEvents"]

#: What one held event costs beyond its body and session id: the event object, its
#: seq and time, its bytes and str headers and the list's slot (``sys.getsizeof`` on
#: CPython 3.11: 64 + 28 + 24 + 33 + 49 + 8 = 206 bytes).
EVENT_OVERHEAD = 208


class HeldEvent(Costed, Protocol):
    """An event as :func:`~starmux.resync.first_page` costs it, with its seq."""

    @property
    def seq(self) -> int: ...


E = TypeVar("E", bound=HeldEvent)


def _held_bytes(event: HeldEvent) -> int:
    return len(event.body) + len(event.session) + EVENT_OVERHEAD


class RecentEvents(Generic[E]):
    """The newest committed events, up to ``max_bytes``; see the module docstring."""

    def __init__(self, *, last_seq: int, max_bytes: int) -> None:
        if max_bytes < 0:
            raise UsageError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        #: ``_events[_start:]`` is what is held: dropping the oldest moves ``_start``,
        #: and the list is compacted only once half of it is dropped (amortised O(1)).
        self._events: list[E] = []
        self._start = 0
        self._bytes = 0
        #: The seq the next committed event will have.
        self._next_seq = last_seq + 1

    @property
    def first_seq(self) -> int:
        """The oldest seq held (``next seq`` when nothing is held)."""
        return self._next_seq - (len(self._events) - self._start)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def add(self, events: Sequence[E]) -> None:
        """One commit's events, in seq order, following what is held."""
        if not events:
            return
        first = events[0].seq
        if events[-1].seq != first + len(events) - 1:
            raise UsageError("one commit's events must have consecutive seqs")
        if first != self._next_seq:
            # The log lost track of a commit (cancelled mid-transaction): what is
            # held no longer ends where this run starts, so start again from it.
            self._events, self._start, self._bytes = [], 0, 0
        self._next_seq = events[-1].seq + 1
        self._events.extend(events)
        self._bytes += sum([_held_bytes(event) for event in events])
        self._trim()

    def after(self, seq: int, *, limit: int, max_bytes: int | None = None) -> list[E] | None:
        """What :meth:`~daemon.eventlog.EventLog.read_after` would return for ``seq``,
        or None if the events after ``seq`` are older than what is held."""
        if limit < 0:
            raise UsageError("limit must not be negative")
        offset = seq + 1 - self.first_seq
        if offset < 0:
            return None
        start = self._start + offset
        if max_bytes is None:
            return self._events[start : start + limit]
        # Cut at ``limit`` first, as the query's LIMIT does; then what one page holds.
        return first_page(self._events[start : start + limit], max_bytes)

    def _trim(self) -> None:
        events, start = self._events, self._start
        while self._bytes > self.max_bytes and start < len(events):
            self._bytes -= _held_bytes(events[start])
            start += 1
        if start * 2 >= len(events):
            del events[:start]
            start = 0
        self._start = start
