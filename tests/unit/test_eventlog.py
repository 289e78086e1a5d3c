"""EventLog against real SQLite files: ordering, durability, crash safety, atomicity
of ``also`` statements, epochs, group commit, subscribers and paging.

The crash test runs a real child process and synchronises on the seqs it prints
once they are durable (never on sleeps), then kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import aiosqlite
import pytest

from starmux.daemon.eventlog import (
    EventLog,
    EventLogError,
    GuardFailed,
    Statement,
    StatementError,
    StoredEvent,
)
from starmux.daemon.recent_events import EVENT_OVERHEAD
from starmux.errors import UsageError
from starmux.live_window import event_cost
from starmux.resync import first_page

from ..timeouts import scaled

TIMEOUT = scaled(30.0)  # generous: only a broken log ever waits this long
REPO = Path(__file__).resolve().parents[2]
SNAPSHOT_UPSERT = (
    "INSERT INTO sessions (id, status, argv, cwd, title, created_at, updated_at)"
    " VALUES (?, 'running', x'90', '/', 't', ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at"
)


def fixed_rng(byte: int) -> Callable[[int], bytes]:
    return lambda n: bytes([byte]) * n


def snapshot(session: str, at: float) -> Statement:
    return (SNAPSHOT_UPSERT, (session, at, at))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "daemon.sqlite3"


@pytest.fixture
async def log(path: Path) -> AsyncIterator[EventLog]:
    event_log = await EventLog.open(path)
    yield event_log
    await event_log.close()


async def all_events(event_log: EventLog) -> list[StoredEvent]:
    return await event_log.read_after(0, limit=1_000_000)


async def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Another connection, as a second process or a wiping hand would use."""
    async with aiosqlite.connect(path, isolation_level=None) as db:
        return [tuple(row) for row in await db.execute_fetchall(sql, params)]


# --- opening ------------------------------------------------------------------------


async def test_fresh_log(path: Path) -> None:
    event_log = await EventLog.open(path, rng=fixed_rng(0xAB))
    try:
        assert event_log.epoch == "ab" * 8
        assert event_log.last_seq == 0
        assert await all_events(event_log) == []
    finally:
        await event_log.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    tables = {str(r[0]) for r in await raw(path, "SELECT name FROM sqlite_master")}
    assert {"events", "sessions", "commands", "checkpoints", "events_session"} <= tables


async def test_snapshot_tables_have_the_agreed_columns(log: EventLog) -> None:
    expected = {
        "sessions": "id status argv cwd title pid exit_code created_at updated_at"
        " input_tokens output_tokens usd",
        "commands": "command_id ok error hint result at",
        "checkpoints": "id session title body created_at expires_at default_approve decision"
        " decided_by reason decided_at signature",
    }
    for table, columns in expected.items():
        rows = await log.execute_read(f"SELECT name FROM pragma_table_info('{table}')")
        assert [r[0] for r in rows] == columns.split()


async def test_max_batch_must_be_positive(path: Path) -> None:
    with pytest.raises(UsageError):
        await EventLog.open(path, max_batch=0)


# --- ordering and group commit ------------------------------------------------------


async def test_concurrent_appenders_get_gapless_increasing_seqs(log: EventLog) -> None:
    tasks, per_task = 50, 200

    async def producer(task: int) -> list[tuple[int, bytes]]:
        out = []
        for i in range(per_task):
            body = f"{task}:{i}".encode()
            out.append((await log.append(f"s{task}", body, at=float(i)), body))
        return out

    results = await asyncio.gather(*(producer(t) for t in range(tasks)))
    for produced in results:  # each producer saw its own appends in order
        seqs = [seq for seq, _ in produced]
        assert seqs == sorted(seqs)
    written = {seq: body for produced in results for seq, body in produced}
    assert sorted(written) == list(range(1, tasks * per_task + 1))
    assert log.last_seq == tasks * per_task
    stored = await all_events(log)
    assert [e.seq for e in stored] == list(range(1, tasks * per_task + 1))
    assert all(e.body == written[e.seq] for e in stored)
    assert log.commits < tasks * per_task // 10  # producers shared commits


async def test_seqs_follow_call_order(log: EventLog) -> None:
    futures = [log.append_nowait("s", bytes([i]), at=float(i)) for i in range(100)]
    assert await asyncio.gather(*futures) == list(range(1, 101))
    assert [e.body for e in await all_events(log)] == [bytes([i]) for i in range(100)]


async def test_a_burst_is_committed_in_full_batches(log: EventLog) -> None:
    futures = [log.append_nowait("s", b"x" * 100, at=0.0) for _ in range(10_000)]
    assert await asyncio.gather(*futures) == list(range(1, 10_001))
    assert log.commits == -(-10_000 // 512)  # every batch as large as allowed


async def test_max_batch_bounds_a_commit(path: Path) -> None:
    event_log = await EventLog.open(path, max_batch=7)
    try:
        sizes: list[int] = []
        event_log.subscribe(lambda events: sizes.append(len(events)))
        await asyncio.gather(*(event_log.append_nowait("s", b"", at=0.0) for _ in range(50)))
        assert sizes == [7] * 7 + [1]
    finally:
        await event_log.close()


async def test_an_idle_append_commits_at_once(log: EventLog) -> None:
    for i in range(1, 6):
        assert await log.append("s", b"x", at=0.0) == i
        assert log.commits == i  # alone: its own commit, no waiting for company


async def test_a_cancelled_append_is_still_committed(log: EventLog) -> None:
    waiting = asyncio.ensure_future(log.append("s", b"first", at=0.0))
    await asyncio.sleep(0)  # let it queue
    waiting.cancel()
    assert await log.append("s", b"second", at=0.0) == 2
    assert [e.body for e in await all_events(log)] == [b"first", b"second"]


# --- durability ---------------------------------------------------------------------


async def test_reopen_keeps_events_epoch_and_seq(path: Path) -> None:
    first = await EventLog.open(path)
    for i in range(5):
        await first.append(f"s{i % 2}", b"body %d" % i, at=100.0 + i)
    epoch, before = first.epoch, await all_events(first)
    await first.close()

    second = await EventLog.open(path)
    try:
        assert second.epoch == epoch
        assert second.last_seq == 5
        assert await all_events(second) == before
        assert before[2] == StoredEvent(3, 102.0, "s0", b"body 2")
        assert await second.append("s", b"next", at=0.0) == 6
    finally:
        await second.close()


async def test_close_commits_what_is_pending(path: Path) -> None:
    event_log = await EventLog.open(path)
    futures = [event_log.append_nowait("s", b"%d" % i, at=0.0) for i in range(1000)]
    await event_log.close()
    assert [f.result() for f in futures] == list(range(1, 1001))
    reopened = await EventLog.open(path)
    try:
        assert reopened.last_seq == 1000
    finally:
        await reopened.close()


async def test_appending_to_a_closed_log_is_refused(path: Path) -> None:
    event_log = await EventLog.open(path)
    await event_log.close()
    with pytest.raises(UsageError):
        await event_log.append("s", b"x", at=0.0)
    with pytest.raises(UsageError):
        event_log.append_nowait("s", b"x", at=0.0)
    await event_log.close()  # twice is harmless


CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from pathlib import Path
    from starmux.daemon.eventlog import EventLog

    UPSERT = {upsert!r}

    async def main():
        log = await EventLog.open(Path(sys.argv[1]))
        print("epoch", log.epoch, flush=True)
        rng = random.Random(7)
        n = 0
        while True:
            futures = []
            for _ in range(rng.choice([1, 3, 64, 300])):
                futures.append(log.append_nowait(
                    "s", b"event-%d:" % n + b"x" * (n % 300), at=float(n),
                    also=[(UPSERT, ("s", float(n), float(n)))],
                ))
                n += 1
            for future in futures:
                print(await future, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("kill_after", [1, 3000])
async def test_sigkill_loses_nothing_that_was_reported_durable(
    tmp_path: Path, path: Path, kill_after: int
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD.format(upsert=SNAPSHOT_UPSERT))
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        first = await asyncio.wait_for(child.stdout.readline(), TIMEOUT)
        assert first.startswith(b"epoch ")
        epoch = first.split()[1].decode()
        printed: list[int] = []
        while len(printed) < kill_after:
            line = await asyncio.wait_for(child.stdout.readline(), TIMEOUT)
            assert line.endswith(b"\n"), "the child died on its own"
            printed.append(int(line))
        child.kill()  # SIGKILL: no cleanup, likely mid-commit
        rest = await asyncio.wait_for(child.stdout.read(), TIMEOUT)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    # Lines already in the pipe were printed, so they were durable too.
    printed += [int(line) for line in rest.split(b"\n")[:-1]]
    assert printed == list(range(1, len(printed) + 1))

    event_log = await EventLog.open(path)
    try:
        assert event_log.epoch == epoch
        stored = await all_events(event_log)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert len(stored) >= len(printed)
        assert event_log.last_seq == len(stored)
        for event in stored:  # whole events only, each exactly as appended
            n = event.seq - 1
            assert event.body == b"event-%d:" % n + b"x" * (n % 300)
            assert event.at == float(n)
        # The snapshot committed with the last event, not before or after it.
        rows = await event_log.execute_read("SELECT updated_at FROM sessions WHERE id = 's'")
        assert rows == [(stored[-1].at,)]
        assert await event_log.execute_read("PRAGMA integrity_check") == [("ok",)]
        assert await event_log.append("s", b"after", at=0.0) == len(stored) + 1
    finally:
        await event_log.close()


# --- also, execute_write, failures ----------------------------------------------------


async def test_also_commits_with_the_event(log: EventLog) -> None:
    seq = await log.append("s1", b"created", at=5.0, also=[snapshot("s1", 5.0)])
    assert seq == 1
    assert await log.execute_read("SELECT id, updated_at FROM sessions") == [("s1", 5.0)]


async def test_a_failing_also_drops_only_its_own_append(log: EventLog) -> None:
    await log.append("s1", b"created", at=1.0, also=[snapshot("s1", 1.0)])
    seen: list[StoredEvent] = []
    log.subscribe(seen.extend)
    commits = log.commits
    duplicate = (
        "INSERT INTO commands (command_id, ok, error, hint, result, at) VALUES (?,1,'','','',?)"
    )
    await log.execute_write([(duplicate, ("c1", 0.0))])
    good1 = log.append_nowait("s1", b"good1", at=2.0, also=[snapshot("s1", 2.0)])
    # The first statement succeeds, the second fails: neither may remain.
    bad = log.append_nowait(
        "s1", b"bad", at=3.0, also=[snapshot("s1", 3.0), (duplicate, ("c1", 3.0))]
    )
    good2 = log.append_nowait("s2", b"good2", at=4.0, also=[snapshot("s2", 4.0)])
    assert await good1 == 2
    with pytest.raises(StatementError) as caught:
        await bad
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert caught.value.statement == duplicate
    assert await good2 == 3  # the failed append took no seq
    assert log.commits == commits + 2  # execute_write, then one batch of three
    assert [e.body for e in seen] == [b"good1", b"good2"]
    assert [e.body for e in await all_events(log)] == [b"created", b"good1", b"good2"]
    rows = await log.execute_read("SELECT id, updated_at FROM sessions ORDER BY id")
    assert rows == [("s1", 2.0), ("s2", 4.0)]
    assert await log.execute_read("SELECT command_id, at FROM commands") == [("c1", 0.0)]


async def test_a_failing_commit_fails_the_whole_batch(log: EventLog) -> None:
    await log.append("s", b"before", at=0.0)
    commits = log.commits
    futures = [
        log.append_nowait("s", b"a", at=1.0, also=[snapshot("s", 1.0)]),
        log.append_nowait("s", None, at=2.0),  # type: ignore[arg-type]  # NOT NULL
        log.append_nowait("s", b"c", at=3.0),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, EventLogError) for r in results)
    assert all(not isinstance(r, StatementError) for r in results)
    assert log.commits == commits
    assert log.last_seq == 1
    assert [e.body for e in await all_events(log)] == [b"before"]
    assert await log.execute_read("SELECT * FROM sessions") == []
    assert await log.append("s", b"after", at=4.0) == 2  # the log goes on


async def test_execute_write_is_atomic(log: EventLog) -> None:
    insert = "INSERT INTO commands (command_id, ok, error, hint, result, at) VALUES (?,1,'','',?,0)"
    await log.execute_write([(insert, ("c1", "one")), (insert, ("c2", "two"))])
    assert log.last_seq == 0  # no event
    with pytest.raises(StatementError):
        await log.execute_write([(insert, ("c3", "three")), (insert, ("c1", "again"))])
    rows = await log.execute_read("SELECT command_id, result FROM commands ORDER BY command_id")
    assert rows == [("c1", "one"), ("c2", "two")]
    await log.execute_write([])  # nothing to do


async def test_of_two_writes_guarded_on_the_same_row_only_the_first_commits(
    log: EventLog,
) -> None:
    """Each guards on "still running"; the second finds it changed: nothing of it stays."""
    await log.append("s1", b"created", at=1.0, also=[snapshot("s1", 1.0)])
    decide = "UPDATE sessions SET status = ? WHERE id = 's1' AND status = 'running'"
    record = "INSERT INTO commands (command_id, ok, error, hint, result, at) "
    record += "VALUES (?,1,'','','',0)"
    winner = asyncio.ensure_future(
        log.append("s1", b"win", at=3.0, also=[(record, ("c-win",))], guard=(decide, ("a",)))
    )
    loser = asyncio.ensure_future(
        log.append("s1", b"lose", at=4.0, also=[(record, ("c-lose",))], guard=(decide, ("b",)))
    )
    assert await winner == 2
    with pytest.raises(GuardFailed):
        await loser
    assert [e.body for e in await all_events(log)] == [b"created", b"win"]
    assert await log.execute_read("SELECT status FROM sessions") == [("a",)]
    assert await log.execute_read("SELECT command_id FROM commands") == [("c-win",)]
    assert await log.append("s1", b"after", at=5.0) == 3  # the loser took no seq


async def test_a_guard_that_matches_several_rows_fails(log: EventLog) -> None:
    await log.append("s1", b"one", at=1.0, also=[snapshot("s1", 1.0)])
    await log.append("s2", b"two", at=1.0, also=[snapshot("s2", 1.0)])
    with pytest.raises(GuardFailed):
        await log.append("s", b"x", at=2.0, guard=("UPDATE sessions SET status = 'x'", ()))
    assert await log.execute_read("SELECT DISTINCT status FROM sessions") == [("running",)]


async def test_execute_read_refuses_writes(log: EventLog) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await log.execute_read("DELETE FROM events")


# --- epochs -----------------------------------------------------------------------


async def wipe_settings(path: Path) -> None:
    await raw(path, "DELETE FROM settings WHERE name = 'epoch'")


async def wipe_log(path: Path) -> None:
    await raw(path, "DELETE FROM events")
    await raw(path, "DELETE FROM sqlite_sequence WHERE name = 'events'")


async def corrupt_epoch(path: Path) -> None:
    await raw(path, "UPDATE settings SET value = x'00ff' WHERE name = 'epoch'")


@pytest.mark.parametrize(
    ("wipe", "last_seq"), [(wipe_settings, 3), (wipe_log, 0), (corrupt_epoch, 3)]
)
async def test_a_wiped_log_gets_a_new_epoch(
    path: Path, wipe: Callable[[Path], Awaitable[None]], last_seq: int
) -> None:
    first = await EventLog.open(path, rng=fixed_rng(1))
    for _ in range(3):
        await first.append("s", b"x", at=0.0)
    await first.close()
    await wipe(path)

    second = await EventLog.open(path, rng=fixed_rng(2))
    try:
        assert first.epoch == "01" * 8
        assert second.epoch == "02" * 8
        assert second.last_seq == last_seq
        assert await second.append("s", b"y", at=0.0) == last_seq + 1
    finally:
        await second.close()
    third = await EventLog.open(path, rng=fixed_rng(3))  # settled: stays
    try:
        assert third.epoch == second.epoch
    finally:
        await third.close()


async def test_pruning_is_not_a_wipe_and_seqs_are_never_reused(path: Path) -> None:
    first = await EventLog.open(path)
    for _ in range(4):
        await first.append("s", b"x", at=0.0)
    await first.close()
    await raw(path, "DELETE FROM events")

    second = await EventLog.open(path)
    try:
        assert second.epoch == first.epoch
        assert second.last_seq == 4
        assert await second.append("s", b"y", at=0.0) == 5
    finally:
        await second.close()


async def test_an_empty_log_keeps_its_epoch(path: Path) -> None:
    first = await EventLog.open(path)
    await first.close()
    second = await EventLog.open(path)
    try:
        assert second.epoch == first.epoch
    finally:
        await second.close()


# --- subscribers --------------------------------------------------------------------


async def test_subscribers_get_every_event_once_in_order(log: EventLog) -> None:
    seen: list[StoredEvent] = []
    calls: list[int] = []

    def on_commit(events: list[StoredEvent]) -> None:
        calls.append(len(events))
        seen.extend(events)

    log.subscribe(on_commit)

    async def producer(task: int) -> None:
        for i in range(100):
            await log.append(f"s{task}", b"%d" % i, at=float(i))

    await asyncio.gather(*(producer(t) for t in range(20)))
    await asyncio.gather(*(log.append_nowait("burst", b"", at=0.0) for _ in range(1000)))
    assert seen == await all_events(log)
    assert len(calls) == log.commits  # one call per commit, none empty
    assert all(calls)


async def test_unsubscribe_and_a_broken_subscriber(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def broken(events: list[StoredEvent]) -> None:
        raise RuntimeError("consumer bug")

    log.subscribe(broken)
    unsubscribe = log.subscribe(lambda events: seen.extend(e.seq for e in events))
    assert await log.append("s", b"1", at=0.0) == 1
    unsubscribe()
    unsubscribe()  # idempotent
    assert await log.append("s", b"2", at=0.0) == 2
    assert seen == [1]
    assert "consumer bug" in caplog.text


# --- reading ------------------------------------------------------------------------


async def test_read_after_pages(log: EventLog) -> None:
    for i in range(10):
        await log.append("s", b"%d" % i, at=0.0)
    assert [e.seq for e in await log.read_after(3, limit=4)] == [4, 5, 6, 7]
    assert [e.seq for e in await log.read_after(8, limit=4)] == [9, 10]
    assert await log.read_after(10, limit=4) == []
    assert await log.read_after(0, limit=0) == []
    with pytest.raises(UsageError):
        await log.read_after(0, limit=-1)


async def test_read_after_with_max_bytes_reads_what_one_page_holds(log: EventLog) -> None:
    for i in range(30):
        await log.append("s-1", b"%04d" % i * 250, at=0.0)  # 1,000 bytes each
    every = await log.read_after(0, limit=1000)
    cost = event_cost(every[0])
    page = await log.read_after(0, limit=1000, max_bytes=5 * cost)
    assert page == every[:5] == first_page(every, 5 * cost)
    assert await log.read_after(27, limit=1000, max_bytes=5 * cost) == every[27:]
    assert await log.read_after(3, limit=2, max_bytes=5 * cost) == every[3:5]
    # An event bigger than the page is still read, alone: the log always moves on.
    assert await log.read_after(8, limit=1000, max_bytes=10) == every[8:9]
    assert await log.read_after(30, limit=1000, max_bytes=5 * cost) == []
    with pytest.raises(UsageError):
        await log.read_after(0, limit=-1, max_bytes=cost)


async def test_reads_from_memory_equal_reads_from_the_file(path: Path) -> None:
    """The newest events answer from memory (``recent_bytes``), older ones from SQLite;
    every read, whichever answers it, equals the same query of the file."""
    every_cost = 1_000 + 3 + EVENT_OVERHEAD  # what memory counts per event held
    event_log = await EventLog.open(path, recent_bytes=12 * every_cost)
    try:
        for batch in range(6):
            futures = [
                event_log.append_nowait(f"s-{i % 2}", b"%04d" % i * 250, at=float(i))
                for i in range(batch * 5, batch * 5 + 5)
            ]
            await asyncio.gather(*futures)
        rows = await raw(path, "SELECT seq, at, session, body FROM events ORDER BY seq")
        in_file = [StoredEvent(*cast(tuple[int, float, str, bytes], row)) for row in rows]
        assert len(in_file) == 30
        for after in range(0, 32):
            for limit, page in [(1000, None), (4, None), (1000, 3 * event_cost(in_file[0]))]:
                expected = in_file[after : after + limit]
                if page is not None:
                    expected = first_page(expected, page)
                read = await event_log.read_after(after, limit=limit, max_bytes=page)
                assert read == expected, (after, limit, page)
    finally:
        await event_log.close()


async def test_a_reopened_log_reads_its_history_from_the_file(path: Path) -> None:
    first = await EventLog.open(path)
    for i in range(5):
        await first.append("s", b"%d" % i, at=0.0)
    await first.close()
    second = await EventLog.open(path)
    try:
        assert [e.seq for e in await second.read_after(2, limit=10)] == [3, 4, 5]
        await second.append("s", b"5", at=0.0)
        assert [e.body for e in await second.read_after(0, limit=10)] == [
            b"0",
            b"1",
            b"2",
            b"3",
            b"4",
            b"5",
        ]
        assert [e.seq for e in await second.read_after(5, limit=10)] == [6]
    finally:
        await second.close()


async def test_read_session_pages_through_one_session(log: EventLog) -> None:
    for i in range(20):
        await log.append("a" if i % 3 else "b", b"%d" % i, at=float(i))
    expected = [e for e in await all_events(log) if e.session == "a"]
    pages: list[list[StoredEvent]] = []
    after = 0
    while page := await log.read_session("a", after=after, limit=4):
        pages.append(page)
        after = page[-1].seq
    assert [len(p) for p in pages] == [4, 4, 4, 1]
    assert [e for p in pages for e in p] == expected
    assert await log.read_session("nobody", limit=10) == []
    with pytest.raises(UsageError):
        await log.read_session("a", limit=-1)
