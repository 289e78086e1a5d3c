"""Flow control of live pushes (network-free): the window split, the machine's
in-flight bound inside its Feed, the controller's ack pacing, and both talking over
an in-memory wire with a controller that falls behind."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from starmux.daemon.live import merge_live_pages
from starmux.errors import UsageError
from starmux.live_window import (
    BYTE_BUDGET,
    MAX_BYTES,
    MAX_PAGES,
    MIN_BYTES,
    MIN_PAGES,
    PAGE_BUDGET,
    AckPacer,
    Window,
    accepted,
    event_cost,
    page_cost,
    window_for,
)
from starmux.messages import EventPage, LiveAck, LoggedEvent, SyncRequest
from starmux.resync import (
    PAGE_BYTES,
    Action,
    Cursor,
    Feed,
    FeedState,
    Follower,
    Read,
    first_page,
)

from .test_resync import EPOCH, apply, events


def live_feed() -> Feed:
    feed = Feed()
    feed.answer(Read(0, 10), [], epoch=EPOCH, last_seq=0)
    assert feed.live
    return feed


SYNC_AGAIN = EventPage(EPOCH, (), True, True)


def test_the_budget_is_split_between_live_machines_down_to_a_floor() -> None:
    assert window_for(0) == window_for(1) == Window(PAGE_BUDGET, BYTE_BUDGET)
    assert window_for(4) == Window(PAGE_BUDGET // 4, BYTE_BUDGET // 4)
    assert window_for(100_000) == Window(MIN_PAGES, MIN_BYTES)
    # Up to this many machines, all of them together stay within the budget.
    most = PAGE_BUDGET // MIN_PAGES
    assert window_for(most).pages * most <= PAGE_BUDGET
    assert window_for(most).bytes * most <= BYTE_BUDGET


def test_pages_the_sender_joins_count_as_one_and_may_free_room() -> None:
    feed = live_feed()
    feed.acked(LiveAck(EPOCH, 0, 5, 100_000), epoch=EPOCH)
    first, second, third = (
        feed.committed(events(seq, seq), epoch=EPOCH, backlog=0)[0] for seq in (1, 2, 3)
    )
    assert feed.committed(events(4, 4), epoch=EPOCH, backlog=0) == []  # 3 of 5 out: held
    before = feed.in_flight.bytes
    assert feed.joined(first, third) == []  # not neighbours: nothing changes
    assert feed.in_flight.pages == 3
    # Joined, they are 2 pages: under half the window, so what was held goes.
    assert [[e.seq for e in p.events] for p in feed.joined(first, second)] == [[4]]
    assert feed.in_flight.pages == 3 and feed.in_flight.bytes > before
    feed.acked(LiveAck(EPOCH, 2, 5, 100_000), epoch=EPOCH)  # the joined page
    assert feed.in_flight.pages == 2


def test_a_machine_bounds_the_window_a_controller_gives() -> None:
    assert accepted(0, -5) == Window(1, 1)
    assert accepted(10**9, 10**15) == Window(MAX_PAGES, MAX_BYTES)
    assert accepted(7, 7000) == Window(7, 7000)


@pytest.mark.parametrize(
    "fields",
    [("bad id!", 1, 1, 1), (EPOCH, -1, 1, 1), (EPOCH, 1, 0, 1), (EPOCH, 1, 1, 0),
     (EPOCH, 1, 2**20 + 1, 1), (EPOCH, 1, 1, 2**40 + 1)],
)  # fmt: skip
def test_a_live_ack_out_of_range_does_not_exist(fields: tuple[str, int, int, int]) -> None:
    with pytest.raises(UsageError):
        LiveAck(*fields)


def test_without_an_ack_a_controller_is_pushed_to_as_before() -> None:
    feed = live_feed()
    for seq in range(1, 2001):
        assert len(feed.committed(events(seq, seq), epoch=EPOCH, backlog=0)) == 1
    assert feed.live and feed.in_flight.pages == 0  # nothing kept: no bound to keep


def seqs(pushed: list[EventPage]) -> list[list[int]]:
    return [[e.seq for e in page.events] for page in pushed]


def test_commits_wait_while_half_the_window_is_out_and_go_joined_on_the_ack() -> None:
    feed = live_feed()
    feed.acked(LiveAck(EPOCH, 0, 4, 100_000), epoch=EPOCH)
    # Idle: each commit goes at once, alone.
    assert seqs(feed.committed(events(1, 1), epoch=EPOCH, backlog=0)) == [[1]]
    assert seqs(feed.committed(events(2, 2), epoch=EPOCH, backlog=0)) == [[2]]
    # Half the window out: the controller acks once it applied them; meanwhile
    # commits wait and join.
    assert feed.in_flight.half_used()
    for seq in (3, 4, 5):
        assert feed.committed(events(seq, seq), epoch=EPOCH, backlog=0) == []
    assert [e.seq for e in feed.held] == [3, 4, 5]
    assert seqs(feed.acked(LiveAck(EPOCH, 2, 4, 100_000), epoch=EPOCH)) == [[3, 4, 5]]
    assert feed.held == [] and feed.in_flight.pages == 1 and feed.live


def test_what_cannot_fit_a_whole_window_is_paged_by_the_controller() -> None:
    feed = live_feed()
    one = page_cost(EventPage(EPOCH, tuple(events(1, 1, size=1000)), False, True))
    feed.acked(LiveAck(EPOCH, 0, 100, 4 * one), epoch=EPOCH)
    # Pages of at most half the window's bytes: two events each.
    assert seqs(feed.committed(events(1, 3, size=1000), epoch=EPOCH, backlog=0)) == [[1, 2]]
    assert feed.committed(events(4, 6, size=1000), epoch=EPOCH, backlog=0) == []
    assert [e.seq for e in feed.held] == [3, 4, 5, 6]  # a whole window: still fits
    assert feed.committed(events(7, 7, size=1000), epoch=EPOCH, backlog=0) == [SYNC_AGAIN]
    assert feed.state is FeedState.SYNCING and feed.held == [] and feed.in_flight.pages == 0
    assert feed.committed(events(8, 8), epoch=EPOCH, backlog=0) == []  # paged, not pushed
    # The controller's request pages the rest; at the log's end it is live again.
    page = feed.answer(Read(2, 100), events(3, 4, size=1000), epoch=EPOCH, last_seq=8)
    assert [e.seq for e in page.events] == [3, 4] and page.more
    page = feed.answer(Read(4, 100), events(5, 8, size=10), epoch=EPOCH, last_seq=8)
    assert not page.more and feed.live


def test_a_page_count_window_holds_too() -> None:
    feed = live_feed()
    feed.acked(LiveAck(EPOCH, 0, 2, 100_000), epoch=EPOCH)
    assert seqs(feed.committed(events(1, 1), epoch=EPOCH, backlog=0)) == [[1]]
    assert feed.committed(events(2, 2), epoch=EPOCH, backlog=0) == []  # 1 of 2 out: half
    assert seqs(feed.acked(LiveAck(EPOCH, 1, 2, 100_000), epoch=EPOCH)) == [[2]]


def test_an_answer_while_live_carries_what_was_held() -> None:
    feed = live_feed()
    feed.acked(LiveAck(EPOCH, 0, 2, 100_000), epoch=EPOCH)
    feed.committed(events(1, 1), epoch=EPOCH, backlog=0)
    feed.committed(events(2, 3), epoch=EPOCH, backlog=0)
    assert [e.seq for e in feed.held] == [2, 3]
    page = feed.answer(Read(1, 100), events(2, 3), epoch=EPOCH, last_seq=3)
    assert not page.more and feed.live and feed.held == []
    assert feed.acked(LiveAck(EPOCH, 3, 2, 100_000), epoch=EPOCH) == []  # nothing twice


def test_a_sync_answer_fits_the_window_too() -> None:
    """Many machines paged at once answer one page each: within the window, all of
    them together stay within what the relay holds for the controller."""
    feed = live_feed()
    logged = events(1, 20, size=1000)
    one = page_cost(EventPage(EPOCH, tuple(logged[:1]), False, True))
    assert len(feed.answer(Read(0, 100), logged, epoch=EPOCH, last_seq=20).events) == 20
    feed.acked(LiveAck(EPOCH, 0, 8, 3 * one), epoch=EPOCH)
    page = feed.answer(Read(0, 100), logged, epoch=EPOCH, last_seq=20)
    assert [e.seq for e in page.events] == [1, 2, 3] and page.more
    # An event bigger than the window still goes, alone: the log always moves on.
    feed.acked(LiveAck(EPOCH, 0, 8, 10), epoch=EPOCH)
    page = feed.answer(Read(3, 100), logged[3:], epoch=EPOCH, last_seq=20)
    assert [e.seq for e in page.events] == [4] and page.more


def test_a_sync_request_reads_no_more_of_the_log_than_its_answer_holds() -> None:
    """A window of a few events must not cost a read of the request's limit (a
    thousand events) on every page: the log is read lazily up to the answer."""
    feed = live_feed()
    assert feed.read_for(SyncRequest(EPOCH, 0, 1000), epoch=EPOCH).max_bytes == PAGE_BYTES
    logged = events(1, 1000, size=1000)
    one = event_cost(logged[0])
    feed.acked(LiveAck(EPOCH, 0, 8, 3 * one), epoch=EPOCH)
    read = feed.read_for(SyncRequest(EPOCH, 0, 1000), epoch=EPOCH)
    assert read == Read(0, 1000, 3 * one)
    pulled: list[int] = []

    def log() -> Iterator[LoggedEvent]:
        for event in logged:
            pulled.append(event.seq)
            yield event

    taken = first_page(log(), read.max_bytes)
    assert [e.seq for e in taken] == [1, 2, 3] and pulled == [1, 2, 3, 4]
    page = feed.answer(read, taken, epoch=EPOCH, last_seq=1000)
    assert [e.seq for e in page.events] == [1, 2, 3] and page.more


def test_an_ack_for_another_epoch_acknowledges_nothing() -> None:
    feed = live_feed()
    feed.acked(LiveAck(EPOCH, 0, 2, 10_000), epoch=EPOCH)
    feed.committed(events(1, 1), epoch=EPOCH, backlog=0)
    feed.committed(events(2, 2), epoch=EPOCH, backlog=0)
    assert feed.acked(LiveAck("feedfacefeedface", 1, 2, 10_000), epoch=EPOCH) == []
    assert feed.in_flight.pages == 1 and [e.seq for e in feed.held] == [2]


def test_the_controller_acks_on_going_live_then_every_half_window() -> None:
    pacer, window = AckPacer(), Window(4, 10_000)
    pacer.applied(EventPage(EPOCH, tuple(events(1, 5)), False, False))  # the last sync page
    assert (pacer.seq, pacer.pages) == (5, 0) and pacer.due(window)  # no window given yet
    pacer.sent(window)
    pacer.applied(EventPage(EPOCH, tuple(events(6, 6)), False, True))
    assert not pacer.due(window)
    pacer.applied(EventPage(EPOCH, tuple(events(7, 7)), False, True))
    assert pacer.due(window) and pacer.seq == 7
    pacer.sent(window)
    assert not pacer.due(window)
    assert pacer.due(Window(2, 10_000))  # a new share is said at once
    pacer.reset()
    assert (pacer.seq, pacer.epoch, pacer.window) == (0, "", None)


@pytest.mark.parametrize("seed", range(40))
def test_a_slow_controller_gets_everything_once_within_its_window(seed: int) -> None:
    """The machine commits faster than the controller applies; acks and pages are
    delayed on the wire. Live pages in flight never pass the window, and every event
    arrives once, in order."""
    rng = random.Random(seed)
    window = Window(rng.randint(1, 6), rng.choice([200, 1_000, 100_000]))
    log: list[LoggedEvent] = []
    feed, follow, pacer = Feed(), Follower(), AckPacer()
    cursor = Cursor("", 0)
    applied: list[int] = []
    down: list[EventPage] = []  # machine → controller
    up: list[LiveAck] = []  # controller → machine
    most_in_flight = 0
    held_back = 0

    def commit() -> None:
        nonlocal held_back
        fresh = events(len(log) + 1, len(log) + rng.randint(1, 4), size=rng.randint(1, 120))
        log.extend(fresh)
        pushed = feed.committed(fresh, epoch=EPOCH, backlog=0)
        held_back += bool(feed.held) or SYNC_AGAIN in pushed
        down.extend(pushed)

    def request() -> None:
        follow.requested()
        read = feed.read_for(SyncRequest(cursor.epoch, cursor.seq, 7), epoch=EPOCH)
        chunk = [e for e in log if e.seq > read.after][: read.limit]
        down.append(feed.answer(read, chunk, epoch=EPOCH, last_seq=len(log)))

    def deliver() -> None:
        nonlocal cursor
        page = down.pop(0)
        cursor, new, gap = apply(cursor, page)
        applied.extend(new)
        action = follow.page(page, gap=gap)
        if not gap and follow.live:
            pacer.applied(page)
            if pacer.due(window):
                up.append(LiveAck(EPOCH, pacer.seq, window.pages, window.bytes))
                pacer.sent(window)
        if action is Action.REQUEST_SYNC:
            request()  # (as the controller does: the count goes on, acks come no later)

    def join_queued() -> None:
        """The machine's sender joins the two pages at the head of its queue."""
        if len(down) > 1 and (merged := merge_live_pages(down[0], down[1])) is not None:
            released = feed.joined(down[0], down[1])
            down[:2] = [merged]
            down.extend(released)

    request()
    for _ in range(600):
        commit()  # every step: the machine outruns the controller
        if rng.random() < 0.3:
            join_queued()
        if rng.random() < 0.4 and down:
            deliver()
        if up and rng.random() < 0.5:
            down.extend(feed.acked(up.pop(0), epoch=EPOCH))
        if feed.in_flight.window is not None:
            most_in_flight = max(most_in_flight, feed.in_flight.pages)
            assert feed.in_flight.bytes <= window.bytes
    assert most_in_flight <= window.pages
    for _ in range(100_000):  # no more commits: it must settle, nothing held for good
        if up:
            down.extend(feed.acked(up.pop(0), epoch=EPOCH))
        if not down and follow.live and not up:
            break
        if not down:
            request()
        if down:
            deliver()
    assert applied == list(range(1, len(log) + 1))
    assert feed.live and follow.live and not down and not feed.held
    assert held_back, "the window never filled: this run proved nothing"
