"""Resync and the live switch (network-free): the machine's Feed and the controller's
Follower, each alone and talking to each other over an in-memory log."""

from __future__ import annotations

import itertools
import random

import pytest

from starmux.errors import UsageError
from starmux.messages import EventPage, LoggedEvent, SyncRequest
from starmux.resync import (
    FEED_TRANSITIONS,
    FOLLOW_TRANSITIONS,
    PAGE_BYTES,
    PAGE_EVENTS,
    Action,
    Cursor,
    Feed,
    FeedEvent,
    FeedState,
    Follower,
    FollowEvent,
    FollowState,
    Read,
    cursor_for,
    first_page,
    next_in_order,
    page_kind,
    pages,
)

EPOCH = "0123456789abcdef"


def events(first: int, last: int, *, size: int = 10) -> list[LoggedEvent]:
    return [LoggedEvent(seq, float(seq), "s-1", b"x" * size) for seq in range(first, last + 1)]


def seqs(page: EventPage) -> list[int]:
    return [e.seq for e in page.events]


def apply(cursor: Cursor, page: EventPage) -> tuple[Cursor, list[int], bool]:
    """The controller applying ``page`` at ``cursor``, as its cache does: the new
    cursor, the seqs applied, and whether a gap stopped it."""
    cursor, _ = cursor_for(cursor, page)
    result = next_in_order(cursor.seq, page.events)
    if result.events:
        cursor = Cursor(cursor.epoch, result.events[-1].seq)
    return cursor, [e.seq for e in result.events], result.gap


# --- pages ----------------------------------------------------------------------------


def test_pages_hold_events_in_order_and_fit_one_message() -> None:
    big = events(1, 40, size=4000)
    split = pages(big, EPOCH, live=False)
    assert [e.seq for page in split for e in page.events] == list(range(1, 41))
    assert all(sum(len(e.body) + 40 for e in p.events) <= PAGE_BYTES for p in split)
    assert len(split) > 1 and not any(p.more or p.live for p in split)
    many = pages(events(1, PAGE_EVENTS + 1, size=1), EPOCH, live=True)
    assert [len(p.events) for p in many] == [PAGE_EVENTS, 1] and all(p.live for p in many)
    assert pages([], EPOCH, live=True) == []


@pytest.mark.parametrize("seed", range(20))
def test_the_first_page_is_the_first_of_the_pages(seed: int) -> None:
    rng = random.Random(seed)
    logged = [
        LoggedEvent(seq, 0.0, "s-1", b"x" * rng.choice([0, 10, 1000, 20_000, 60_000]))
        for seq in range(1, rng.randrange(0, 1200))
    ]
    max_bytes = rng.choice([1, 100, 5000, 30_000, PAGE_BYTES, 10 * PAGE_BYTES])
    split = pages(logged, EPOCH, live=False, max_bytes=max_bytes)
    assert first_page(iter(logged), max_bytes) == list(split[0].events if split else [])


# --- the machine's side ---------------------------------------------------------------


def test_a_request_reads_after_the_cursor_of_the_same_epoch() -> None:
    feed = Feed()
    assert feed.read_for(SyncRequest(EPOCH, 7, 50), epoch=EPOCH) == Read(7, 50)
    # Another epoch (the log was wiped) or none yet (a first sync): from the start.
    assert feed.read_for(SyncRequest("ffffffffffffffff", 7, 50), epoch=EPOCH) == Read(0, 50)
    assert feed.read_for(SyncRequest("", 7, 50), epoch=EPOCH) == Read(0, 50)
    # Hostile numbers are bounded.
    assert feed.read_for(SyncRequest(EPOCH, -5, 10**9), epoch=EPOCH) == Read(0, PAGE_EVENTS)
    assert feed.read_for(SyncRequest(EPOCH, 3, 0), epoch=EPOCH) == Read(3, 1)


def test_paging_then_live_and_only_fresh_events_are_pushed() -> None:
    feed = Feed()
    read = Read(0, 5)
    page = feed.answer(read, events(1, 5), epoch=EPOCH, last_seq=12)
    assert (seqs(page), page.more, page.live) == ([1, 2, 3, 4, 5], True, False)
    assert feed.state is FeedState.SYNCING
    assert feed.committed(events(13, 13), epoch=EPOCH, backlog=0) == []  # not live yet
    page = feed.answer(Read(5, 100), events(6, 13), epoch=EPOCH, last_seq=13)
    assert (seqs(page), page.more) == (list(range(6, 14)), False)
    assert feed.live and feed.sent_seq == 13
    # A commit overlapping what the last page carried pushes only what is new.
    pushed = feed.committed(events(12, 15), epoch=EPOCH, backlog=0)
    assert [seqs(p) for p in pushed] == [[14, 15]] and all(p.live for p in pushed)
    assert feed.committed(events(15, 15), epoch=EPOCH, backlog=0) == []


def test_an_empty_log_answers_an_empty_last_page() -> None:
    feed = Feed()
    page = feed.answer(Read(0, 10), [], epoch=EPOCH, last_seq=0)
    assert page == EventPage(EPOCH, (), False, False)
    assert feed.live


def test_a_controller_too_far_behind_is_told_to_sync_again() -> None:
    feed = Feed(max_backlog=3)
    feed.answer(Read(0, 10), [], epoch=EPOCH, last_seq=0)
    assert len(feed.committed(events(1, 1), epoch=EPOCH, backlog=3)) == 1
    assert feed.committed(events(2, 2), epoch=EPOCH, backlog=4) == [
        EventPage(EPOCH, (), True, True)
    ]
    assert feed.state is FeedState.SYNCING
    assert feed.committed(events(3, 3), epoch=EPOCH, backlog=0) == []  # not pushed now
    page = feed.answer(Read(1, 10), events(2, 3), epoch=EPOCH, last_seq=3)
    assert seqs(page) == [2, 3] and feed.live


def test_the_feed_table() -> None:
    for state, event in itertools.product(FeedState, FeedEvent):
        feed = Feed()
        feed.state = state
        if (state, event) in FEED_TRANSITIONS:
            feed._go(event)
            assert feed.state is FEED_TRANSITIONS[state, event]
        else:
            with pytest.raises(UsageError):
                feed._go(event)
    assert (FeedState.SYNCING, FeedEvent.BEHIND) not in FEED_TRANSITIONS


# --- the controller's side ------------------------------------------------------------


def test_in_order_application_skips_replays_and_stops_at_a_gap() -> None:
    assert next_in_order(0, events(1, 3)).events == events(1, 3)
    duplicate = next_in_order(3, events(1, 3))
    assert duplicate.events == [] and not duplicate.gap
    overlap = next_in_order(2, events(1, 4))
    assert [e.seq for e in overlap.events] == [3, 4] and not overlap.gap
    gap = next_in_order(2, [*events(3, 4), *events(6, 7)])
    assert [e.seq for e in gap.events] == [3, 4] and gap.gap
    assert next_in_order(0, events(2, 3)).gap


def test_a_new_epoch_starts_over_and_says_whether_the_old_log_was_wiped() -> None:
    page = EventPage("ffffffffffffffff", tuple(events(1, 2)), False, False)
    assert cursor_for(Cursor(EPOCH, 9), page) == (Cursor("ffffffffffffffff", 0), True)
    assert cursor_for(Cursor("", 0), page) == (Cursor("ffffffffffffffff", 0), False)
    same = EventPage(EPOCH, (), False, True)
    assert cursor_for(Cursor(EPOCH, 9), same) == (Cursor(EPOCH, 9), False)


def test_channel_up_pages_then_live_once() -> None:
    follow = Follower()
    follow.requested()
    more = EventPage(EPOCH, tuple(events(1, 2)), True, False)
    last = EventPage(EPOCH, tuple(events(3, 4)), False, False)
    assert follow.page(more, gap=False) is Action.REQUEST_SYNC
    follow.requested()
    assert follow.page(last, gap=False) is Action.GO_LIVE and follow.live
    assert follow.page(last, gap=False) is Action.NOTHING  # a duplicate answer
    pushed = EventPage(EPOCH, tuple(events(5, 5)), False, True)
    assert follow.page(pushed, gap=False) is Action.NOTHING and follow.live


def test_a_gap_while_live_syncs_again_and_goes_live_again() -> None:
    follow = Follower()
    follow.requested()
    follow.page(EventPage(EPOCH, (), False, False), gap=False)
    pushed = EventPage(EPOCH, tuple(events(9, 9)), False, True)
    assert follow.page(pushed, gap=True) is Action.REQUEST_SYNC and not follow.live
    follow.requested()
    assert follow.page(EventPage(EPOCH, (), False, False), gap=False) is Action.GO_LIVE


def test_the_sync_again_page_is_incomplete() -> None:
    assert page_kind(EventPage(EPOCH, (), True, True), gap=False) is FollowEvent.INCOMPLETE


def test_unsolicited_pages_and_lost_channels_never_raise() -> None:
    follow = Follower()
    for page in (
        EventPage(EPOCH, (), False, False),
        EventPage(EPOCH, (), True, True),
        EventPage(EPOCH, (), False, True),
    ):
        assert follow.page(page, gap=False) is Action.NOTHING
        assert follow.state is FollowState.IDLE
    follow.requested()
    follow.page(EventPage(EPOCH, (), False, False), gap=False)
    follow.channel_lost()
    assert follow.state is FollowState.IDLE and not follow.live


def test_the_follower_table_covers_every_page_in_every_state() -> None:
    assert set(FOLLOW_TRANSITIONS) == set(itertools.product(FollowState, FollowEvent))
    going_live = [k for k, (_, action) in FOLLOW_TRANSITIONS.items() if action is Action.GO_LIVE]
    assert going_live == [(FollowState.SYNCING, FollowEvent.LAST)]


# --- both sides over an in-memory log -------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_every_event_arrives_once_in_order_whatever_interleaves(seed: int) -> None:
    """Commits land between any two steps; pages are sometimes delivered twice; the
    controller's queue sometimes overflows. The controller ends live with the log."""
    rng = random.Random(seed)
    log: list[LoggedEvent] = []
    feed, follow = Feed(max_backlog=2), Follower()
    cursor = Cursor("", 0)
    applied: list[int] = []
    wire: list[EventPage] = []  # machine → controller, in order

    def commit() -> None:
        fresh = events(len(log) + 1, len(log) + rng.randint(1, 30))
        log.extend(fresh)
        wire.extend(feed.committed(fresh, epoch=EPOCH, backlog=len(wire)))

    def request() -> None:
        follow.requested()
        read = feed.read_for(SyncRequest(cursor.epoch, cursor.seq, 25), epoch=EPOCH)
        if rng.random() < 0.5:
            commit()  # a commit while the machine reads the log
        chunk = [e for e in log if e.seq > read.after][: read.limit]
        wire.append(feed.answer(read, chunk, epoch=EPOCH, last_seq=len(log)))

    def deliver() -> None:
        nonlocal cursor
        page = wire.pop(0)
        cursor, new, gap = apply(cursor, page)
        applied.extend(new)
        if follow.page(page, gap=gap) is Action.REQUEST_SYNC:
            request()

    commit()
    request()
    for _ in range(400):
        if rng.random() < 0.3:
            commit()
        if wire and rng.random() < 0.1:
            wire.insert(0, wire[0])  # delivered twice
        if wire:
            deliver()
    for _ in range(10_000):  # no more commits: it must settle
        if not wire and follow.live:
            break
        if not wire:
            request()
        deliver()
    assert applied == list(range(1, len(log) + 1))
    assert feed.live and follow.live and not wire
