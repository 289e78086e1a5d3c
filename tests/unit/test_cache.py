"""The controller's cache on a real SQLite file: events applied exactly once, in order,
in the transaction that advances the cursor; projections kept with them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starmux.client.cache import Cache, Cursor
from starmux.client.store import ControllerStore
from starmux.codec import Message
from starmux.messages import (
    APP,
    CheckpointRaised,
    EventPage,
    LoggedEvent,
    Output,
    SessionCreated,
    SessionStatusChanged,
)

MACHINE = b"m" * 32
SESSION = "s-1"


def logged(seq: int, message: Message) -> LoggedEvent:
    return LoggedEvent(seq, 1000.0 + seq, SESSION, APP.encode(message))


def output(seq: int) -> LoggedEvent:
    return logged(seq, Output("stdout", f"line {seq}\n".encode()))


def page(*events: LoggedEvent, epoch: str = "e1") -> EventPage:
    return EventPage(epoch, tuple(events), more=False, live=True)


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    async with ControllerStore(tmp_path / "home") as store:
        yield Cache(store.db)


async def stored_seqs(cache: Cache) -> list[int]:
    return [event.seq for event in await cache.session_events(SESSION)]


async def test_a_page_is_applied_with_its_projections_and_the_cursor(cache: Cache) -> None:
    created = logged(1, SessionCreated(("make", "test"), "/src", "tests", False, "c-1"))
    running = logged(3, SessionStatusChanged("running", None, ""))
    checkpoint = logged(4, CheckpointRaised("k-1", "deploy?", "body", 2000.0, False))

    applied = await cache.apply_page(MACHINE, page(created, output(2), running, checkpoint))

    assert [e.seq for e in applied.events] == [1, 2, 3, 4] and not applied.gap
    assert await cache.cursor(MACHINE) == Cursor("e1", 4)
    assert await stored_seqs(cache) == [1, 2, 3, 4]
    session = await cache.session(SESSION)
    assert session is not None
    assert (session.title, session.argv, session.status) == ("tests", ["make", "test"], "running")
    checkpoints = await cache.checkpoints()
    assert [(c.id, c.title, c.session) for c in checkpoints] == [("k-1", "deploy?", SESSION)]


async def test_a_replayed_or_overlapping_page_applies_only_what_is_new(cache: Cache) -> None:
    await cache.apply_page(MACHINE, page(output(1), output(2)))

    applied = await cache.apply_page(MACHINE, page(output(1), output(2), output(3)))

    assert [e.seq for e in applied.events] == [3]
    assert await stored_seqs(cache) == [1, 2, 3]
    assert await cache.cursor(MACHINE) == Cursor("e1", 3)


async def test_a_gap_stops_application_at_the_last_contiguous_event(cache: Cache) -> None:
    applied = await cache.apply_page(MACHINE, page(output(1), output(2), output(4), output(5)))

    assert [e.seq for e in applied.events] == [1, 2] and applied.gap
    assert await stored_seqs(cache) == [1, 2]
    assert await cache.cursor(MACHINE) == Cursor("e1", 2)


async def test_a_new_epoch_forgets_the_machine_and_starts_again(cache: Cache) -> None:
    created = logged(1, SessionCreated(("true",), "/", "old", False, "c-1"))
    await cache.apply_page(MACHINE, page(created, output(2), output(3)))

    applied = await cache.apply_page(MACHINE, page(output(1), epoch="e2"))

    assert [e.seq for e in applied.events] == [1]
    assert await stored_seqs(cache) == [1]
    assert await cache.session(SESSION) is None
    assert await cache.cursor(MACHINE) == Cursor("e2", 1)


async def test_a_failed_page_leaves_nothing_behind(cache: Cache) -> None:
    await cache.apply_page(MACHINE, page(output(1)))
    # A row the page will collide with (events are keyed by machine and seq), as if
    # the file were damaged: the whole page must roll back with the cursor.
    await cache.db.execute(
        "INSERT INTO events (machine, seq, session, at, body) VALUES (?, 3, ?, 0, x'')",
        (MACHINE, SESSION),
    )
    await cache.db.commit()

    with pytest.raises(Exception, match="UNIQUE"):
        await cache.apply_page(MACHINE, page(output(2), output(3)))

    assert await cache.cursor(MACHINE) == Cursor("e1", 1)
    assert await stored_seqs(cache) == [1, 3]


OTHER = b"o" * 32


async def test_a_batch_of_pages_from_several_machines_is_one_transaction(cache: Cache) -> None:
    batch = [
        (MACHINE, page(output(1), output(2))),
        (OTHER, page(output(1), epoch="x1")),
        (MACHINE, page(output(2), output(3))),  # overlaps the first page
        (OTHER, page(output(3), epoch="x1")),  # a gap: 2 is missing
        (MACHINE, page(output(4))),
    ]

    results = await cache.apply_pages(batch)

    assert [[e.seq for e in r.events] for r in results] == [[1, 2], [1], [3], [], [4]]
    assert [r.gap for r in results] == [False, False, False, True, False]
    assert await cache.cursor(MACHINE) == Cursor("e1", 4)
    assert await cache.cursor(OTHER) == Cursor("x1", 1)
    rows = await cache.db.execute_fetchall("SELECT machine, seq FROM events ORDER BY machine, seq")
    assert [(bytes(m), s) for m, s in rows] == [
        (MACHINE, 1), (MACHINE, 2), (MACHINE, 3), (MACHINE, 4), (OTHER, 1),
    ]  # fmt: skip


async def test_a_new_epoch_inside_a_batch_drops_what_the_batch_queued_before(
    cache: Cache,
) -> None:
    results = await cache.apply_pages(
        [(MACHINE, page(output(1), output(2))), (MACHINE, page(output(1), epoch="e2"))]
    )

    assert [[e.seq for e in r.events] for r in results] == [[1, 2], [1]]
    assert await stored_seqs(cache) == [1]
    assert await cache.cursor(MACHINE) == Cursor("e2", 1)
