"""End-to-end flow control of live pushes, both ends (sans-I/O).

The relay queues what it cannot yet write to a connection and closes a receiver
whose queue passes its bound (1,024 frames or 4 MiB by default: close code 4011).
It cannot push back on senders, so without a bound of our own a fleet whose output
outruns its controller got the controller disconnected, and after the resync
disconnected again (measured: 100 machines streaming to one controller; issue 20).

So the controller acknowledges what it applied, and each machine keeps what it
pushed beyond the last acknowledgement within a window the controller gives::

    machine (Feed + InFlight)                    controller (AckPacer, per machine)

    ◀──────────── live-ack(cursor, window) ──    new channel: the window, then
    ◀──────────────────────── sync-request ──    the first sync request
    push page ──────────────────────────────▶    applied: count it
    (pages, bytes past the last ack)             half a window counted:
    half the window out: commits wait, joined    send live-ack, count from zero
    ◀──────────────── live-ack(seq, window) ──
    push what waited ───────────────────────▶
    what waits would not fit a whole window:
    "sync again" page ─────────────────────▶     sync-request from the cursor
                                                 (one page per round trip)

Both ends count the same pages (the machine joins no counted pages afterwards), so
when half the window is out on the machine's count, the controller's count reaches
half once it has applied those pages, and its ack frees the machine: nothing waits
for good. Under load this joins commits into bigger pages (fewer messages, frames
and acks per event); an idle machine's commit goes at once.

- The controller splits one budget (:data:`PAGE_BUDGET`, :data:`BYTE_BUDGET`,
  below the relay's default bounds, with room for commands and transfers) between
  its machines with an open channel or a handshake under way (:func:`window_for`),
  and gives each its share before its first sync request, so what all of them may
  have in flight stays under the relay's bound up to :data:`PAGE_BUDGET` /
  :data:`MIN_PAGES` machines. What a machine holds that would not fit its whole
  window is paged by sync requests, which the controller itself paces.
- A machine applies no bound until the first live-ack on a channel: a controller
  that never sends one (an older one) is pushed to as before. Both of ours send
  it: the CLI's agent (``client/live.py``) and the browser
  (``web/app/net/live_window.js``).
- A window only ever limits what is pushed; every event still reaches the
  controller, by push or by sync, exactly once and in order (:mod:`starmux.resync`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .messages import EventPage

#: Pages and bytes all of a controller's machines may have in flight together:
#: the relay closes a connection at 1,024 queued frames or 4 MiB.
PAGE_BUDGET = 768
BYTE_BUDGET = 3 * 1024 * 1024
#: The least window a machine gets, however many share the budget.
MIN_PAGES = 4
MIN_BYTES = 16 * 1024
#: What a machine accepts from a controller at most (a window is the controller's
#: choice, but a machine need not hold more than this on its word).
MAX_PAGES = PAGE_BUDGET
MAX_BYTES = BYTE_BUDGET


#: The epoch a live-ack names before the controller knows the machine's (a first
#: sync): any epoch but the machine's acknowledges nothing, and still gives the window.
NO_EPOCH = "none"

#: What an event costs in a page beyond its body and session id (its framing).
EVENT_FRAMING = 32


class Costed(Protocol):
    """An event as logged or as sent (:class:`~starmux.messages.LoggedEvent`, or the
    machine's row): what its cost is counted from."""

    @property
    def body(self) -> bytes: ...

    @property
    def session(self) -> str: ...


def event_cost(event: Costed) -> int:
    """What an event costs in a page: its body, its session id and the framing."""
    return len(event.body) + len(event.session) + EVENT_FRAMING


def page_cost(page: EventPage) -> int:
    """The sum of its events' :func:`event_cost` (written out: the controller counts
    every page it applies)."""
    events = page.events
    return sum([len(event.body) + len(event.session) for event in events]) + (
        EVENT_FRAMING * len(events)
    )


@dataclass(frozen=True, slots=True)
class Window:
    pages: int
    bytes: int

    def half_used(self, pages: int, size: int) -> bool:
        """Whether ``pages`` pages of ``size`` bytes use half of it or more: where the
        machine starts holding commits and the controller acks. Both ends must
        decide it alike, or a machine could hold commits with no ack coming."""
        return pages * 2 >= self.pages or size * 2 >= self.bytes


def window_for(machines: int) -> Window:
    """Each machine's share of the controller's budget, ``machines`` sharing it."""
    share = max(1, machines)
    return Window(max(MIN_PAGES, PAGE_BUDGET // share), max(MIN_BYTES, BYTE_BUDGET // share))


def accepted(pages: int, size: int) -> Window:
    """A controller's window as a machine keeps it: within :data:`MAX_PAGES` and
    :data:`MAX_BYTES`."""
    return Window(min(max(1, pages), MAX_PAGES), min(max(1, size), MAX_BYTES))


class InFlight:
    """The machine's side: the live pages pushed to one controller that it has not
    acknowledged yet, and the window they must fit (None until the first ack)."""

    def __init__(self) -> None:
        self.window: Window | None = None
        self._pages: deque[tuple[int, int]] = deque()  # (last seq, cost)
        self._bytes = 0

    @property
    def pages(self) -> int:
        return len(self._pages)

    @property
    def bytes(self) -> int:
        return self._bytes

    def acked(self, seq: int, window: Window) -> None:
        """The controller applied everything through ``seq``; its window is now ``window``."""
        self.window = window
        self.forget_through(seq)

    def forget_through(self, seq: int) -> None:
        pages = self._pages
        while pages and pages[0][0] <= seq:
            self._bytes -= pages.popleft()[1]

    def joined(self, first: EventPage, second: EventPage) -> None:
        """The machine sent two counted pages as one message (its sender joins pages
        queued behind a send): count them as the one page the controller will count."""
        if not (first.events and second.events):
            return
        pages, last = self._pages, (first.events[-1].seq, second.events[-1].seq)
        for i in range(len(pages) - 1, 0, -1):  # they are among the newest
            if (pages[i - 1][0], pages[i][0]) == last:
                pages[i - 1] = (last[1], pages[i - 1][1] + pages[i][1])
                del pages[i]
                return

    def clear(self) -> None:
        """Back to syncing: what the controller asks for next is paced by its requests."""
        self._pages.clear()
        self._bytes = 0

    def half_used(self) -> bool:
        """Whether half the window is in flight: the controller acknowledges then."""
        window = self.window
        return window is not None and window.half_used(self.pages, self._bytes)

    def admit(self, page: EventPage, cost: int) -> bool:
        """Count ``page`` (of :func:`page_cost` ``cost``) as pushed if it keeps within
        the window; False, and nothing counted, if it would not."""
        window = self.window
        if window is None:
            return True  # no bound to keep: nothing to remember
        if self.pages >= window.pages or self._bytes + cost > window.bytes:
            return False
        if page.events:
            self._pages.append((page.events[-1].seq, cost))
            self._bytes += cost
        return True


class AckPacer:
    """The controller's side for one machine's channel: when to send a live-ack."""

    def __init__(self) -> None:
        self.pages = 0
        self.bytes = 0
        self.seq = 0
        self.epoch = ""
        self.window: Window | None = None

    def reset(self) -> None:
        """A new channel: nothing counted, no window given yet."""
        self.pages = self.bytes = self.seq = 0
        self.epoch = ""
        self.window = None

    def applied(self, page: EventPage) -> None:
        """A page was applied without a gap: everything through its last event is.
        Live pages count toward the next ack; a sync answer was paced by its request."""
        self.epoch = page.epoch
        if page.events:
            if page.live:
                self.pages += 1
                self.bytes += page_cost(page)
            self.seq = max(self.seq, page.events[-1].seq)

    def due(self, window: Window) -> bool:
        """Whether to acknowledge now: half the window was used (so a machine at full
        speed is never stopped by an ack still on its way), or the window changed."""
        return self.window != window or window.half_used(self.pages, self.bytes)

    def sent(self, window: Window) -> None:
        """A live-ack for :attr:`seq` with ``window`` went out."""
        self.pages = self.bytes = 0
        self.window = window


__all__ = [
    "BYTE_BUDGET",
    "EVENT_FRAMING",
    "MAX_BYTES",
    "MAX_PAGES",
    "MIN_BYTES",
    "MIN_PAGES",
    "NO_EPOCH",
    "PAGE_BUDGET",
    "AckPacer",
    "InFlight",
    "Window",
    "accepted",
    "event_cost",
    "page_cost",
    "window_for",
]
