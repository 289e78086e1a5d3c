"""Resync and the live switch, both ends of one Noise_KK channel, as state machines.

The controller drives: on every channel up it sends ``SyncRequest(epoch, after_seq)``
with its cursor; the machine answers each request with one :class:`EventPage`
whose ``more`` says whether to ask again. The answer with ``more=False`` also
makes the controller *live* on the machine: from then on every committed event is
pushed (``live=True`` pages) as it happens. ::

    machine (Feed, per controller)          controller (Follower, per machine)

    syncing ──last page sent──▶ live         idle ──request──▶ syncing ──last page──▶ live
       ▲                         │             ▲                 ▲                     │
       └──request / behind ◀─────┘             │                 └──gap / more ◀───────┤
                                               └─────────── channel lost ◀─────────────┘

Invariants:

- Seqs are per machine, gapless and durable; ``epoch`` names one continuous log.
  A request for another epoch (the log was wiped, or a first sync) is answered
  from the start of the current one.
- Machine: a page holds events in seq order and fits one Noise message
  (:func:`pages`). A request is answered with one page, so the adapter reads the
  log no further than that page (:attr:`Read.max_bytes`, :func:`first_page`).
  Going live happens in the same step as computing ``more`` (no await between
  them in the adapter), so no commit falls between the last sync page and the
  first pushed one. Once half a controller's live window
  (:mod:`starmux.live_window`) is unacknowledged, commits are held and pushed
  joined on its next ack. A controller whose send queue is longer than
  ``max_backlog``, or for which more is held than its whole window, goes back to
  ``syncing`` and is told so with an empty ``more=True`` page: it pages through
  the log instead of an unbounded queue here or at the relay.
- Controller: events are applied exactly once, in order (:func:`next_in_order`);
  a gap or ``more`` means "request again from the cursor"; the first complete
  answer means live (the adapter then sends its outbox). Duplicate pages apply
  nothing and change no state.
- Both :data:`FEED_TRANSITIONS` and :data:`FOLLOW_TRANSITIONS` are the whole truth;
  an event not listed raises :class:`~starmux.errors.UsageError` (our bug). What a
  peer sends never raises: the follower's table covers every page in every state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import UsageError
from .live_window import Costed, InFlight, Window, accepted, event_cost
from .messages import EventPage, LiveAck, LoggedEvent, SyncRequest

E = TypeVar("E", bound=Costed)

PAGE_BYTES = 48 * 1024  # an EventPage must fit one Noise message (64 KiB) with room
PAGE_EVENTS = 1000
MAX_BACKLOG = 256  # messages queued for a controller before it is taken off live


def pages(
    events: Sequence[LoggedEvent], epoch: str, *, live: bool, max_bytes: int = PAGE_BYTES
) -> list[EventPage]:
    """Split events into pages (``more=False``) that each fit one encrypted message
    and ``max_bytes`` (an event bigger than that still gets a page of its own)."""
    return [page for page, _ in costed_pages(events, epoch, live=live, max_bytes=max_bytes)]


def costed_pages(
    events: Sequence[LoggedEvent], epoch: str, *, live: bool, max_bytes: int = PAGE_BYTES
) -> list[tuple[EventPage, int]]:
    """:func:`pages`, each with its cost (:func:`~starmux.live_window.page_cost`)."""
    max_bytes = min(max_bytes, PAGE_BYTES)
    result: list[tuple[EventPage, int]] = []
    current: list[LoggedEvent] = []
    size = 0
    for event in events:
        cost = event_cost(event)
        if _page_full(len(current), size, cost, max_bytes):
            result.append((EventPage(epoch, tuple(current), False, live), size))
            current, size = [], 0
        current.append(event)
        size += cost
    if current:
        result.append((EventPage(epoch, tuple(current), False, live), size))
    return result


def first_page(events: Iterable[E], max_bytes: int = PAGE_BYTES) -> list[E]:
    """The leading events :func:`pages` would put in its first page, taken from
    ``events`` one at a time: a sync answer is one page, so the log is read lazily
    and no further than this (one event past it at most)."""
    max_bytes = min(max_bytes, PAGE_BYTES)
    taken: list[E] = []
    size = 0
    for event in events:
        cost = event_cost(event)
        if _page_full(len(taken), size, cost, max_bytes):
            break
        taken.append(event)
        size += cost
    return taken


def _page_full(count: int, size: int, cost: int, max_bytes: int) -> bool:
    """Whether a page of ``count`` events and ``size`` bytes is closed before an event
    of ``cost`` (one rule for every cut: an event too big for ``max_bytes`` still
    gets a page of its own)."""
    return count > 0 and (size + cost > max_bytes or count >= PAGE_EVENTS)


# --- the machine's side ---------------------------------------------------------------


class FeedState(enum.StrEnum):
    SYNCING = "syncing"  # answering requests; nothing is pushed
    LIVE = "live"  # every commit is pushed


class FeedEvent(enum.StrEnum):
    ANSWERED_MORE = "answered-more"  # a sync page went out, more to come
    ANSWERED_LAST = "answered-last"  # the sync page that reached the log's end
    BEHIND = "behind"  # the controller's queue is too long, or its window full


FEED_TRANSITIONS: dict[tuple[FeedState, FeedEvent], FeedState] = {
    (FeedState.SYNCING, FeedEvent.ANSWERED_MORE): FeedState.SYNCING,
    (FeedState.SYNCING, FeedEvent.ANSWERED_LAST): FeedState.LIVE,
    # A controller that saw a gap asks again while live: it syncs again.
    (FeedState.LIVE, FeedEvent.ANSWERED_MORE): FeedState.SYNCING,
    (FeedState.LIVE, FeedEvent.ANSWERED_LAST): FeedState.LIVE,
    (FeedState.LIVE, FeedEvent.BEHIND): FeedState.SYNCING,
}


@dataclass(frozen=True, slots=True)
class Read:
    """What the adapter must read from the log to answer a request."""

    after: int
    limit: int
    #: what one answer holds at most (see :func:`first_page`): no more need be read
    max_bytes: int = PAGE_BYTES


class Feed:
    """The machine's side of one controller's channel."""

    def __init__(self, *, max_backlog: int = MAX_BACKLOG) -> None:
        self.state = FeedState.SYNCING
        self.max_backlog = max_backlog
        #: The last seq handed to the controller (by a page or a push).
        self.sent_seq = 0
        #: Live pages the controller has not acknowledged, and its window.
        self.in_flight = InFlight()
        #: Committed while half the window was in flight, already cut into the pages
        #: (with their costs) they will be pushed as when the controller's next ack
        #: frees the window; ``_held_cut``: the epoch and page size they were cut for.
        self._held: list[tuple[EventPage, int]] = []
        self._held_cut = ("", 0)

    @property
    def live(self) -> bool:
        return self.state is FeedState.LIVE

    def _go(self, event: FeedEvent) -> None:
        new = FEED_TRANSITIONS.get((self.state, event))
        if new is None:
            raise UsageError(f"a feed cannot take {event.value} when {self.state.value}")
        self.state = new
        if new is FeedState.SYNCING:
            # From here the controller's own requests pace what it gets.
            self.in_flight.clear()
            self._held = []

    def acked(self, ack: LiveAck, *, epoch: str) -> list[EventPage]:
        """The controller's live-ack: what it applied, and its window from now on (an
        ack for another epoch, the log was wiped since, acknowledges nothing). Returns
        what to push now: what was held for it."""
        seq = ack.seq if ack.epoch == epoch else 0
        self.in_flight.acked(seq, accepted(ack.window_pages, ack.window_bytes))
        return self._release(epoch) if self.live else []

    def joined(self, first: EventPage, second: EventPage) -> list[EventPage]:
        """The machine's sender sent two pushed pages as one message. They count as
        the one page the controller will count, which may free room: returns what
        was held and can go now."""
        self.in_flight.joined(first, second)
        return self._release(first.epoch) if self.live else []

    def read_for(self, request: SyncRequest, *, epoch: str) -> Read:
        """The log range that answers ``request`` (from the start for another epoch)."""
        after = max(0, request.after_seq) if request.epoch == epoch else 0
        return Read(after, max(1, min(request.limit, PAGE_EVENTS)), self._answer_bytes())

    def _answer_bytes(self) -> int:
        """A sync answer's size: within the controller's live window, if it gave one
        (a controller paging many machines at once must not get more from all of them
        than the relay holds)."""
        window = self.in_flight.window
        return min(window.bytes, PAGE_BYTES) if window else PAGE_BYTES

    def answer(
        self, read: Read, events: Sequence[LoggedEvent], *, epoch: str, last_seq: int
    ) -> EventPage:
        """The one page answering a request, given what was read and the log's end now
        (cut again here: the window may have changed while the log was read)."""
        first = first_page(events, self._answer_bytes())
        last = first[-1].seq if first else read.after
        more = last < last_seq
        self._go(FeedEvent.ANSWERED_MORE if more else FeedEvent.ANSWERED_LAST)
        self.in_flight.forget_through(read.after)  # the request's cursor says it applied these
        if self._held:  # this page carries what was held up to ``last``
            kept = [e for e in self.held if e.seq > last]
            self._held = []
            self._hold(kept, *self._held_cut)
        self.sent_seq = last
        return EventPage(epoch, tuple(first), more, False)

    def committed(
        self, events: Sequence[LoggedEvent], *, epoch: str, backlog: int
    ) -> list[EventPage]:
        """What to push for a commit: pages of the events not sent yet (none unless
        live), or, for a controller too far behind, the "sync again" page."""
        if not self.live:
            return []
        fresh = [e for e in events if e.seq > self.sent_seq]
        if not fresh:
            return []
        if backlog > self.max_backlog:
            return self._behind(epoch)
        self.sent_seq = fresh[-1].seq
        window = self.in_flight.window
        if window is None:
            return pages(fresh, epoch, live=True)  # no window given: pushed as they come
        self._hold(fresh, epoch, _held_page_bytes(window))
        return self._release(epoch)

    @property
    def held(self) -> list[LoggedEvent]:
        """The events held, in order."""
        return [event for page, _ in self._held for event in page.events]

    def _hold(self, events: Sequence[LoggedEvent], epoch: str, max_bytes: int) -> None:
        """Add ``events`` to what is held, cut into pages of at most ``max_bytes``
        exactly as :func:`costed_pages` would cut all of it. Only the last page is
        still open, so only it is cut again: holding a commit costs what the commit
        holds, not everything held (up to a window, 3 MiB for one machine)."""
        if (epoch, max_bytes) != self._held_cut:
            events, self._held = [*self.held, *events], []
            self._held_cut = (epoch, max_bytes)
        elif not events:
            return
        elif self._held:
            events = [*self._held.pop()[0].events, *events]
        self._held.extend(costed_pages(events, epoch, live=True, max_bytes=max_bytes))

    def _release(self, epoch: str) -> list[EventPage]:
        """Push held events while less than half the window is in flight, in pages of
        at most half its bytes (so one always fits then, and what is pushed brings the
        controller to its next ack). Under load commits wait here and join into bigger
        pages (fewer messages and frames); when idle they go at once. What cannot fit
        a whole window: "sync again", and the controller pages through the log."""
        window = self.in_flight.window
        if window is None or not self._held:
            return []
        self._hold((), epoch, _held_page_bytes(window))  # cut again if the window changed
        out: list[EventPage] = []
        for page, cost in self._held:
            if self.in_flight.half_used() or not self.in_flight.admit(page, cost):
                break
            out.append(page)
        del self._held[: len(out)]
        waiting = self._held
        if len(waiting) > window.pages or sum(cost for _, cost in waiting) > window.bytes:
            return out + self._behind(epoch)
        return out

    def _behind(self, epoch: str) -> list[EventPage]:
        self._go(FeedEvent.BEHIND)
        return [EventPage(epoch, (), True, True)]


def _held_page_bytes(window: Window) -> int:
    """Held events go in pages of at most half the window's bytes: one always fits
    while less than half is in flight."""
    return max(1, window.bytes // 2)


# --- the controller's side ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far the controller has applied a machine's log."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Applied:
    events: list[LoggedEvent]  # newly applied, in order
    gap: bool  # events were skipped for a missing seq: resync from the cursor


def next_in_order(cursor_seq: int, events: Sequence[LoggedEvent]) -> Applied:
    """The events of a page that follow ``cursor_seq`` without a gap, in order: ones at
    or below it are a replay or an overlap of sync and live; a missing seq stops."""
    applied: list[LoggedEvent] = []
    seq = cursor_seq
    for event in events:
        if event.seq <= seq:
            continue
        if event.seq != seq + 1:
            return Applied(applied, gap=True)
        applied.append(event)
        seq = event.seq
    return Applied(applied, gap=False)


def cursor_for(cursor: Cursor, page: EventPage) -> tuple[Cursor, bool]:
    """The cursor a page applies against, and whether the machine's log was wiped
    (another epoch than a known one: forget what was cached of it)."""
    if page.epoch == cursor.epoch:
        return cursor, False
    return Cursor(page.epoch, 0), bool(cursor.epoch)


class FollowState(enum.StrEnum):
    IDLE = "idle"  # no sync asked on this channel yet
    SYNCING = "syncing"  # a request is out; pages come in answer
    LIVE = "live"  # caught up: events are pushed as they happen


class FollowEvent(enum.StrEnum):
    LAST = "last"  # the complete answer to a request (``more=False``, not live)
    PUSHED = "pushed"  # a live page, in order
    INCOMPLETE = "incomplete"  # ``more``, or a gap in what it carried
    REQUESTED = "requested"  # (not a page) the adapter sent a SyncRequest
    CHANNEL_LOST = "channel-lost"  # (not a page) reset, decrypt failure, offline


class Action(enum.StrEnum):
    NOTHING = "nothing"
    REQUEST_SYNC = "request-sync"  # send SyncRequest from the cursor
    GO_LIVE = "go-live"  # the machine is live: deliver the outbox


FOLLOW_TRANSITIONS: dict[tuple[FollowState, FollowEvent], tuple[FollowState, Action]] = {
    # Pages nobody asked for (a misbehaving machine): applied if in order, no more.
    (FollowState.IDLE, FollowEvent.LAST): (FollowState.IDLE, Action.NOTHING),
    (FollowState.IDLE, FollowEvent.PUSHED): (FollowState.IDLE, Action.NOTHING),
    (FollowState.IDLE, FollowEvent.INCOMPLETE): (FollowState.IDLE, Action.NOTHING),
    (FollowState.IDLE, FollowEvent.REQUESTED): (FollowState.SYNCING, Action.NOTHING),
    (FollowState.SYNCING, FollowEvent.REQUESTED): (FollowState.SYNCING, Action.NOTHING),
    (FollowState.LIVE, FollowEvent.REQUESTED): (FollowState.SYNCING, Action.NOTHING),
    (FollowState.SYNCING, FollowEvent.LAST): (FollowState.LIVE, Action.GO_LIVE),
    (FollowState.SYNCING, FollowEvent.PUSHED): (FollowState.SYNCING, Action.NOTHING),
    (FollowState.SYNCING, FollowEvent.INCOMPLETE): (FollowState.SYNCING, Action.REQUEST_SYNC),
    (FollowState.LIVE, FollowEvent.LAST): (FollowState.LIVE, Action.NOTHING),  # a duplicate
    (FollowState.LIVE, FollowEvent.PUSHED): (FollowState.LIVE, Action.NOTHING),
    (FollowState.LIVE, FollowEvent.INCOMPLETE): (FollowState.SYNCING, Action.REQUEST_SYNC),
    (FollowState.IDLE, FollowEvent.CHANNEL_LOST): (FollowState.IDLE, Action.NOTHING),
    (FollowState.SYNCING, FollowEvent.CHANNEL_LOST): (FollowState.IDLE, Action.NOTHING),
    (FollowState.LIVE, FollowEvent.CHANNEL_LOST): (FollowState.IDLE, Action.NOTHING),
}


def page_kind(page: EventPage, *, gap: bool) -> FollowEvent:
    if gap or page.more:
        return FollowEvent.INCOMPLETE
    return FollowEvent.PUSHED if page.live else FollowEvent.LAST


class Follower:
    """The controller's side of one machine's channel."""

    def __init__(self) -> None:
        self.state = FollowState.IDLE

    @property
    def live(self) -> bool:
        return self.state is FollowState.LIVE

    def _go(self, event: FollowEvent) -> Action:
        step = FOLLOW_TRANSITIONS.get((self.state, event))
        if step is None:
            raise UsageError(f"a follower cannot take {event.value} when {self.state.value}")
        self.state, action = step
        return action

    def channel_lost(self) -> None:
        """The channel is gone (reset, decrypt failure, machine offline): not live."""
        self._go(FollowEvent.CHANNEL_LOST)

    def requested(self) -> None:
        """A SyncRequest from the cursor went out (channel up, gap, or more)."""
        self._go(FollowEvent.REQUESTED)

    def page(self, page: EventPage, *, gap: bool) -> Action:
        """A page was applied (``gap``: it skipped a missing seq); what to do next."""
        return self._go(page_kind(page, gap=gap))


__all__ = [
    "FEED_TRANSITIONS",
    "FOLLOW_TRANSITIONS",
    "MAX_BACKLOG",
    "PAGE_BYTES",
    "PAGE_EVENTS",
    "Action",
    "Applied",
    "Cursor",
    "Feed",
    "FeedEvent",
    "FeedState",
    "FollowEvent",
    "FollowState",
    "Follower",
    "Read",
    "cursor_for",
    "next_in_order",
    "page_kind",
    "pages",
]
