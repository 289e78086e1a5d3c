"""WAL checkpoints off the writers' path.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold
(1,000 WAL pages): that one commit copies the WAL into the database file and
fsyncs both, milliseconds on a real disk, while every event behind it waits. At a
thousand events a second it happened several times a second on each side (daemon
log, controller cache) and set the p99 of append → applied (issue 20: 4–5 ms with
it, 1.7 ms without).

So the connections :func:`starmux.node.database.open_database` makes turn it off,
and one thread per process checkpoints every such file through a connection of its
own: ``PRAGMA wal_checkpoint(PASSIVE)`` neither waits for nor blocks readers and
writers. Once everything is copied the next writer starts the WAL from its
beginning again, so the file stays as small as before. A file is checked often
while it is written (the WAL then stays a few thousand pages at most) and rarely
when idle; its connection closes soon after the last of the process's own
connections to it has.

A writer starts the WAL over in the first transaction that finds it wholly
copied. One committing every millisecond or so rarely does (some commit lands
while the checkpoint runs), so its WAL keeps growing; past :data:`GROWN_FRAMES`
pages the file is checkpointed at :data:`BUSY_INTERVAL`, which soon gives a writer
a WAL wholly copied. (A ``RESTART`` checkpoint would guarantee it, but it holds
writers off while it waits for readers: issue 20 measured p99s of 27–65 ms at
100 machines with it, 4–6 ms without.)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between checkpoints: at least, and for an idle file.
BUSY_INTERVAL = 0.02
IDLE_INTERVAL = 1.0
#: WAL pages to let gather between checkpoints of a busy file (SQLite's own
#: threshold): each checkpoint costs an fsync or two whatever it copies.
TARGET_FRAMES = 1000
#: How long to wait for another process's brief lock before skipping this turn.
BUSY_TIMEOUT_MS = 50
#: WAL pages (64 MiB of 4 KiB pages) past which a file is checkpointed as often as a
#: busy one may be, until a writer starts its WAL over.
GROWN_FRAMES = 16 * TARGET_FRAMES

IsOpen = Callable[[], bool]


@dataclass
class _Watched:
    connection: sqlite3.Connection
    holders: list[IsOpen] = field(default_factory=list)
    due: float = 0.0
    interval: float = BUSY_INTERVAL
    #: the WAL's frame count at the last checkpoint: unchanged means nothing written
    frames: int = -1

    def open_holders(self) -> list[IsOpen]:
        return [holder for holder in self.holders if holder()]


class Checkpointer:
    """Checkpoints the WAL of every file it watches from one background thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._files: dict[Path, _Watched] = {}
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, path: Path, is_open: IsOpen) -> bool:
        """Checkpoint ``path`` while ``is_open()`` (or another holder's) is true.
        False if this file cannot be checkpointed here: keep SQLite's own then."""
        path = path.resolve()
        with self._lock:
            watched = self._files.get(path)
            if watched is None:
                try:
                    connection = _connect(path)
                except sqlite3.Error as exc:
                    log.debug("no background checkpoints for %s: %s", path, exc)
                    return False
                watched = self._files[path] = _Watched(connection)
            watched.holders.append(is_open)
            watched.due = self._clock() + BUSY_INTERVAL
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="starmux-checkpointer", daemon=True
                )
                self._thread.start()
        self._wake.set()
        return True

    def watching(self, path: Path) -> bool:
        with self._lock:
            return path.resolve() in self._files

    def run_once(self, *, every: bool = False) -> float:
        """Checkpoint every file that is due (``every``: every file now); returns
        seconds until the next is due."""
        with self._turn:  # (a test may call this beside the thread)
            return self._run_once(every)

    def _run_once(self, every: bool) -> float:
        now = self._clock()
        with self._lock:
            files = list(self._files.items())
        for path, watched in files:
            watched.holders = watched.open_holders()
            if not watched.holders:
                with self._lock:
                    self._files.pop(path, None)
                watched.connection.close()
                continue
            if every or watched.due <= now:
                frames = _checkpoint(path, watched.connection)
                watched.interval = next_interval(watched.interval, watched.frames, frames)
                watched.frames = -1 if frames is None else frames
                watched.due = now + watched.interval
        with self._lock:
            dues = [watched.due for watched in self._files.values()]
        return max(0.0, min(dues) - self._clock()) if dues else IDLE_INTERVAL

    def _run(self) -> None:
        while True:
            wait = self.run_once()
            self._wake.wait(wait)
            self._wake.clear()


def next_interval(interval: float, before: int, frames: int | None) -> float:
    """The wait before the next checkpoint, from the WAL's frame count at this one
    (``frames``; None: it could not run) and at the last (``before``; -1: none yet):
    long enough for about :data:`TARGET_FRAMES` new pages at the rate just seen.

    The new pages are what the count grew by, not the count. A writer starts the
    WAL over only when it begins while the WAL is wholly copied, and one committing
    every millisecond or so rarely does: some commit lands while the checkpoint
    runs. The WAL then keeps growing, and reading its whole count as new pages held
    a busy file at :data:`BUSY_INTERVAL` (issue 20: 50 checkpoints a second at 1,000
    events/s, each with two fsyncs, against the 6 the rate needs). A count smaller
    than the last means the WAL started over: all of it is new. (One that started
    over and outgrew the last count reads as fewer new pages than it has: the next
    checkpoint is late once, by at most :data:`IDLE_INTERVAL`.)"""
    if frames is None or frames >= GROWN_FRAMES:
        return BUSY_INTERVAL
    written = frames if before < 0 or frames < before else frames - before
    if written <= 0:
        return IDLE_INTERVAL  # nothing written since (or no WAL: -1)
    wanted = interval * TARGET_FRAMES / written
    return min(IDLE_INTERVAL, max(BUSY_INTERVAL, wanted))


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


def _checkpoint(path: Path, connection: sqlite3.Connection) -> int | None:
    """One passive checkpoint; the WAL's frame count, None if it could not run (a
    busy or vanished file: try again soon)."""
    try:
        rows = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        log.debug("checkpoint of %s skipped: %s", path, exc)
        return None
    return int(rows[0][1]) if rows else None


#: The process's one checkpointer (started with the first file it watches).
CHECKPOINTER = Checkpointer()


def watch_connection(path: Path, connection: object, is_open: Callable[[object], bool]) -> bool:
    """Watch ``path`` for as long as ``connection`` is alive and ``is_open`` says so;
    only a weak reference is kept, so a forgotten connection does not pin the file."""
    ref = weakref.ref(connection)

    def alive() -> bool:
        held = ref()
        return held is not None and is_open(held)

    return CHECKPOINTER.watch(path, alive)
