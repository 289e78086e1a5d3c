"""The controller's cache on a real SQLite file: events applied exactly once, in order,
in the transaction that advances the cursor; projections kept with them."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest

from starmux.client.cache import AmbiguousId, Cache, Cursor
from starmux.client.store import DATABASE_FILE, ControllerStore
from starmux.codec import Message
from starmux.decisions import Verdict
from starmux.messages import (
    APP,
    CancelSession,
    CheckpointDecided,
    CheckpointRaised,
    CommandAck,
    CostReported,
    EventPage,
    LoggedEvent,
    Output,
    OutputStream,
    SessionCreated,
    SessionStatusChanged,
    StartSession,
)
from starmux.node.loop_writer import LoopWriter
from starmux.session_state import Status

MACHINE = b"m" * 32
SESSION = "s-1"


def logged(seq: int, message: Message) -> LoggedEvent:
    return LoggedEvent(seq, 1000.0 + seq, SESSION, APP.encode(message))


def output(seq: int) -> LoggedEvent:
    return logged(seq, Output(OutputStream.STDOUT, f"line {seq}\n".encode()))


def page(*events: LoggedEvent, epoch: str = "e1") -> EventPage:
    return EventPage(epoch, tuple(events), more=False, live=True)


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    async with ControllerStore(tmp_path / "home") as store:
        yield Cache(store.db)


async def stored_seqs(cache: Cache) -> list[int]:
    return [event.seq for event in await cache.session_events(SESSION, machine=MACHINE)]


async def test_a_page_is_applied_with_its_projections_and_the_cursor(cache: Cache) -> None:
    created = logged(1, SessionCreated(("make", "test"), "/src", "tests", False, "c-1"))
    running = logged(3, SessionStatusChanged(Status.RUNNING, None, ""))
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
    # Each with its machine's cursor after it (what a sync request asks from).
    assert [r.cursor for r in results] == [
        Cursor("e1", 2), Cursor("x1", 1), Cursor("e1", 3), Cursor("x1", 1), Cursor("e1", 4),
    ]  # fmt: skip
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


# --- machines cannot reach each other's rows (keyed by machine and id) -------------

A, B = b"A" * 32, b"B" * 32


async def test_a_machine_cannot_change_another_machines_session_or_checkpoint(
    cache: Cache,
) -> None:
    created = logged(1, SessionCreated(("deploy",), "/srv", "deploy", False, "k-a"))
    raised = logged(2, CheckpointRaised("c-a", "ship it?", "", 5000.0, False))
    await cache.apply_page(A, page(created, raised, output(3)))
    # B learned A's ids and replays them as its own events.
    await cache.apply_page(
        B,
        page(
            logged(1, SessionStatusChanged(Status.FAILED, 1, "")),
            logged(2, CostReported(10**9, 10**9, 1e6, "")),
            logged(3, CheckpointDecided("c-a", Verdict.APPROVED, b"", "", 4000.0)),
            logged(4, Output(OutputStream.STDOUT, b"rm -rf / done\n")),
            epoch="eb",
        ),
    )

    session = await cache.session(SESSION)
    assert session is not None and session.machine == A
    assert (session.status, session.usd, session.input_tokens) == ("queued", 0.0, 0)
    checkpoint = await cache.checkpoint("c-a")
    assert checkpoint is not None and checkpoint.machine == A and checkpoint.decision is None
    assert [c.id for c in await cache.checkpoints()] == ["c-a"]
    # A's log is A's alone: B's output under A's session id is not part of it.
    assert [e.seq for e in await cache.session_events(SESSION)] == [1, 2, 3]


async def test_a_bare_session_id_means_the_machine_it_was_started_on(cache: Cache) -> None:
    start = StartSession(SESSION, ("make",), "/", "make", {}, False)
    await cache.enqueue("k-start", A, start.KIND, APP.encode(start))
    # B reports a session with that id before A does, claiming an earlier time.
    early = LoggedEvent(1, 1.0, SESSION, APP.encode(SessionCreated(("x",), "/", "B", False, "k")))
    await cache.apply_page(B, page(early, epoch="eb"))
    assert await cache.session_machine(SESSION) == A
    assert await cache.session(SESSION) is None  # A has not reported it yet

    await cache.apply_page(A, page(logged(1, SessionCreated(("make",), "/", "A", False, "k"))))

    session = await cache.session(SESSION)
    assert session is not None and (session.machine, session.title) == (A, "A")
    assert [e.seq for e in await cache.session_events(SESSION)] == [1]
    other = await cache.session(SESSION, B)
    assert other is not None and other.title == "B"


async def test_an_id_two_machines_claim_is_ambiguous_not_guessed(cache: Cache) -> None:
    for machine in (A, B):
        await cache.apply_page(
            machine,
            page(
                logged(1, SessionCreated(("x",), "/", "t", False, "k")),
                logged(2, CheckpointRaised("c-1", "?", "", 5000.0, False)),
            ),
        )

    with pytest.raises(AmbiguousId, match="2 machines claim the session id"):
        await cache.session(SESSION)
    with pytest.raises(AmbiguousId, match="2 machines claim the checkpoint id"):
        await cache.checkpoint("c-1")
    row = await cache.checkpoint("c-1", B)
    assert row is not None and row.machine == B

    # The one whose session this controller started on that machine is meant.
    start = StartSession(SESSION, ("x",), "/", "t", {}, False)
    await cache.enqueue("k-start", A, start.KIND, APP.encode(start))
    checkpoint = await cache.checkpoint("c-1")
    assert checkpoint is not None and checkpoint.machine == A


async def test_only_the_machine_a_command_went_to_can_ack_it(cache: Cache) -> None:
    cancel = CancelSession(SESSION)
    await cache.enqueue("k-1", A, cancel.KIND, APP.encode(cancel))

    await cache.record_ack(B, CommandAck("k-1", False, "nope", "", ""))
    command = await cache.command("k-1")
    assert command is not None and not command.acked
    assert [c.command_id for c in await cache.pending(A)] == ["k-1"]
    assert await cache.command("k-1", B) is None

    await cache.record_ack(A, CommandAck("k-1", True, "", "", "cancelled"))
    command = await cache.command("k-1", A)
    assert command is not None and command.acked and command.ok


# --- hostile events are refused when applied -------------------------------------


def raw_event(seq: int, kind: str, **fields: object) -> LoggedEvent:
    """An event body built without our constructors' checks, as a hostile machine can."""
    if kind == "checkpoint-raised":  # version 2 added the preview
        return LoggedEvent(
            seq, 1000.0 + seq, SESSION, msgpack.packb([kind, 2, {**fields, "preview": None}])
        )
    return LoggedEvent(seq, 1000.0 + seq, SESSION, msgpack.packb([kind, 1, fields]))


HOSTILE = [
    pytest.param(
        raw_event(
            2,
            "checkpoint-raised",
            checkpoint="c-2",
            title="t",
            body="",
            expires_at=float("inf"),
            default_approve=False,
        ),
        id="infinite-expiry",
    ),
    pytest.param(
        raw_event(
            2,
            "checkpoint-raised",
            checkpoint="c-2",
            title="t",
            body="",
            expires_at=1e300,
            default_approve=False,
        ),
        id="expiry-1e300",
    ),
    pytest.param(
        raw_event(
            2,
            "checkpoint-raised",
            checkpoint="c-2\x1b]52;c;aGk=\x07",
            title="t",
            body="",
            expires_at=2000.0,
            default_approve=False,
        ),
        id="osc52-in-checkpoint-id",
    ),
    pytest.param(
        raw_event(2, "session-status", status="running\x1b[1A\x1b[2K", exit_code=None, detail=""),
        id="csi-in-status",
    ),
    pytest.param(
        raw_event(2, "session-status", status="hacked", exit_code=None, detail=""),
        id="unknown-status",
    ),
    pytest.param(
        raw_event(
            2,
            "checkpoint-decided",
            checkpoint="c-1",
            decision="approved",
            by=b"",
            reason="",
            decided_at=float("nan"),
        ),
        id="nan-decision-time",
    ),
    pytest.param(
        raw_event(2, "cost", input_tokens=1, output_tokens=1, usd=float("inf"), note=""),
        id="infinite-cost",
    ),
]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_a_hostile_event_is_refused_and_the_log_moves_on(
    cache: Cache, hostile: LoggedEvent
) -> None:
    created = logged(1, SessionCreated(("x",), "/", "t", False, "k"))
    done = logged(3, SessionStatusChanged(Status.SUCCEEDED, 0, ""))

    applied = await cache.apply_page(MACHINE, page(created, hostile, done))

    assert [e.seq for e in applied.events] == [1, 3] and applied.refused == (2,)
    assert await cache.cursor(MACHINE) == Cursor("e1", 3)  # no resync loop on it
    assert await stored_seqs(cache) == [1, 3]
    session = await cache.session(SESSION)
    assert session is not None and (session.status, session.usd) == ("succeeded", 0.0)
    assert await cache.checkpoints(pending_only=False) == []


async def test_an_event_of_a_newer_daemon_is_kept_not_refused(cache: Cache) -> None:
    newer = LoggedEvent(1, 1001.0, SESSION, msgpack.packb(["session-status", 2, {"x": 1}]))
    unknown = LoggedEvent(2, 1002.0, SESSION, msgpack.packb(["telemetry", 1, {}]))

    applied = await cache.apply_page(MACHINE, page(newer, unknown))

    assert [e.seq for e in applied.events] == [1, 2] and applied.refused == ()
    assert await stored_seqs(cache) == [1, 2]


@pytest.mark.parametrize("on_loop", [True, False], ids=["loop-writer", "database-thread"])
async def test_cursors_written_by_another_connection_are_read_again(
    tmp_path: Path, on_loop: bool
) -> None:
    # The cache keeps the cursors it committed between applies; a write by any other
    # connection (another process resetting a machine) must not be hidden by that.
    home = tmp_path / "home"
    async with ControllerStore(home) as store:
        path = home / DATABASE_FILE
        writer = await LoopWriter.open(store.db, path) if on_loop else None
        cache = Cache(store.db, writer)
        try:
            await cache.apply_page(MACHINE, page(output(1), output(2), output(3)))
            other = sqlite3.connect(path, isolation_level=None)
            with contextlib.closing(other):
                other.execute("BEGIN IMMEDIATE")
                other.execute("DELETE FROM events WHERE machine = ? AND seq > 1", (MACHINE,))
                other.execute("UPDATE cursors SET seq = 1 WHERE machine = ?", (MACHINE,))
                other.execute("COMMIT")

            applied = await cache.apply_page(MACHINE, page(output(2), output(3), output(4)))

            assert [e.seq for e in applied.events] == [2, 3, 4] and not applied.gap
            assert await cache.cursor(MACHINE) == Cursor("e1", 4)
            assert await stored_seqs(cache) == [1, 2, 3, 4]
        finally:
            if writer is not None:
                writer.close()
