"""The daemon joins live pages already queued for a controller into one message
(``daemon.live.merge_live_pages``): only pushed live events of one epoch, never a
sync answer or the "sync again" page, and never past one encrypted message."""

from __future__ import annotations

from starmux.daemon.live import merge_live_pages
from starmux.messages import EventPage, LoggedEvent
from starmux.resync import PAGE_BYTES, PAGE_EVENTS


def _page(
    *seqs: int, live: bool = True, more: bool = False, epoch: str = "e1", size: int = 10
) -> EventPage:
    events = tuple(LoggedEvent(seq, 1.0, "s-1", bytes(size)) for seq in seqs)
    return EventPage(epoch, events, more, live)


def test_two_live_pages_become_one_in_order() -> None:
    merged = merge_live_pages(_page(1, 2), _page(3))
    assert merged == EventPage("e1", _page(1, 2, 3).events, False, True)


def test_sync_answers_and_the_sync_again_page_are_never_joined() -> None:
    assert merge_live_pages(_page(1, live=False), _page(2)) is None
    assert merge_live_pages(_page(1), _page(2, live=False)) is None
    assert merge_live_pages(_page(1), EventPage("e1", (), True, True)) is None
    assert merge_live_pages(_page(1, more=True), _page(2)) is None


def test_pages_of_different_epochs_are_not_joined() -> None:
    assert merge_live_pages(_page(1, epoch="e1"), _page(1, epoch="e2")) is None


def test_a_join_never_outgrows_one_page() -> None:
    half = PAGE_BYTES // 2
    assert merge_live_pages(_page(1, size=half), _page(2, size=half)) is None
    many = tuple(range(1, PAGE_EVENTS + 1))
    assert merge_live_pages(_page(*many, size=1), _page(PAGE_EVENTS + 1, size=1)) is None
    assert merge_live_pages(_page(*many[:-1], size=1), _page(PAGE_EVENTS, size=1)) is not None
