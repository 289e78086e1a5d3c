"""RecentEvents: the newest events held in memory answer exactly what the log would.

The reference is the whole log as a list; every read from what is held must equal
the same read of the reference, or decline (None) when it starts before the oldest
event held. Appends, the byte bound and a commit that does not follow what is held
are driven by hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.daemon.recent_events import EVENT_OVERHEAD, RecentEvents
from starmux.errors import UsageError
from starmux.resync import first_page


@dataclass(frozen=True)
class Event:
    seq: int
    session: str
    body: bytes


def held_cost(event: Event) -> int:
    return len(event.body) + len(event.session) + EVENT_OVERHEAD


def commits_of(sizes: list[list[int]], first_seq: int = 1) -> list[list[Event]]:
    """Commits of events with consecutive seqs, bodies of the given sizes."""
    seq = first_seq
    commits = []
    for commit in sizes:
        events = []
        for size in commit:
            events.append(Event(seq, f"s-{seq % 3}", bytes([seq % 251]) * size))
            seq += 1
        commits.append(events)
    return commits


commit_sizes = st.lists(st.lists(st.integers(0, 600), min_size=1, max_size=8), max_size=12)


@given(
    sizes=commit_sizes,
    max_bytes=st.integers(0, 6000),
    last_seq=st.integers(0, 50),
    limit=st.integers(0, 12),
    page_bytes=st.none() | st.integers(1, 3000),
)
def test_reads_equal_the_logs_or_decline(
    sizes: list[list[int]], max_bytes: int, last_seq: int, limit: int, page_bytes: int | None
) -> None:
    recent = RecentEvents[Event](last_seq=last_seq, max_bytes=max_bytes)
    log: list[Event] = []
    for commit in commits_of(sizes, first_seq=last_seq + 1):
        recent.add(commit)
        log.extend(commit)
        end = last_seq + len(log)
        assert recent.first_seq <= end + 1
        assert recent.held_bytes <= max_bytes
        held = [e for e in log if e.seq >= recent.first_seq]
        assert recent.held_bytes == sum(held_cost(e) for e in held)
        # Everything newer than what is held would not have fitted with it.
        dropped = [e for e in log if e.seq < recent.first_seq]
        if dropped:
            assert recent.held_bytes + held_cost(dropped[-1]) > max_bytes
        for after in range(0, end + 3):
            answer = recent.after(after, limit=limit, max_bytes=page_bytes)
            if after + 1 < recent.first_seq:
                assert answer is None
                continue
            expected = [e for e in log if e.seq > after][:limit]
            if page_bytes is not None:
                expected = first_page(expected, page_bytes)
            assert answer == expected


def test_a_log_just_opened_holds_nothing_and_answers_only_from_its_end() -> None:
    recent = RecentEvents[Event](last_seq=40, max_bytes=10_000)
    assert recent.first_seq == 41
    assert recent.after(40, limit=5) == []
    assert recent.after(45, limit=5) == []  # a cursor past the end: nothing after it
    assert recent.after(39, limit=5) is None  # seq 40 is only in the file


def test_a_commit_that_does_not_follow_what_is_held_replaces_it() -> None:
    recent = RecentEvents[Event](last_seq=0, max_bytes=100_000)
    first, _lost, third = commits_of([[10, 10], [10], [10, 10]])
    recent.add(first)
    recent.add(third)  # the commit of seq 3 was lost track of
    assert recent.first_seq == 4
    assert recent.after(3, limit=10) == third
    assert recent.after(2, limit=10) is None
    assert recent.held_bytes == sum(held_cost(e) for e in third)


def test_one_commits_events_must_be_consecutive() -> None:
    recent = RecentEvents[Event](last_seq=0, max_bytes=100_000)
    with pytest.raises(UsageError):
        recent.add([Event(1, "s", b""), Event(3, "s", b"")])
    with pytest.raises(UsageError):
        RecentEvents[Event](last_seq=0, max_bytes=-1)
    with pytest.raises(UsageError):
        recent.after(0, limit=-1)


def test_dropping_the_oldest_keeps_memory_bounded_over_many_commits() -> None:
    """The list behind it is compacted: after 10,000 commits it holds about what
    the bound allows, not every event ever added."""
    bound = 20 * (100 + 3 + EVENT_OVERHEAD)
    recent = RecentEvents[Event](last_seq=0, max_bytes=bound)
    commits = commits_of([[100]] * 10_000)
    for commit in commits:
        recent.add(commit)
    assert recent.first_seq == 10_000 - 19
    assert len(recent._events) <= 2 * 20 + 1
    assert recent.after(10_000 - 20, limit=100) == [c[0] for c in commits[-20:]]
