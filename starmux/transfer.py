"""Moving a file over the live channel: chunks, credit, resume, whole-file hash (sans-I/O).

One transfer has a **sender** (holds the file) and a **receiver** (writes it). A
download is an artifact from a machine to a controller (``fetch-file`` starts it);
an upload is an attachment from a controller to a machine (``offer-file``). The
messages are in :mod:`starmux.transfer_messages`; the adapters that read and write
files are ``daemon/transfers.py`` and ``client/transfers.py``.

::

    receiver                                         sender
    WAITING ── fetch-file(offset, window) ──────────▶ (download: starts it)
             ◀── offer-file(name, size, digest) ───── (upload: the sender starts it)
             ── file-credit(confirmed, window) ──────▶ WAITING → STREAMING
             ◀── file-chunk(index, data) … up to confirmed + window
             ── file-credit(confirmed) ─────────────▶ more credit
    all chunks in: BLAKE2b-256 of the whole file = digest → DONE, else FAILED
    channel lost: both PAUSED; new channel: the receiver asks again from what it holds

Invariants:

- Chunk ``i`` carries exactly the bytes ``[i * CHUNK_SIZE, min(size, (i + 1) *
  CHUNK_SIZE))``. The channel keeps order (Noise nonces), so the receiver accepts
  only the next index; anything else fails the transfer (the peer has a bug).
- The sender sends chunk ``i`` only while ``i < confirmed + window`` (credit): at
  most a window of chunks is ever in flight, so a big file cannot fill the relay's
  queues, and the sender's adapter sends a chunk only when nothing else waits
  (live output and approvals go first).
- ``confirmed`` only grows within one stream and never passes what was sent.
- A resume starts at the receiver's count of chunks it holds: a chunk already
  written is never sent again, the hash state carries on (or, when another process
  began the file, is rebuilt from the bytes it kept: :meth:`Receiver.hold`).
- The whole-file hash is checked once, after the last chunk; on a mismatch (or any
  failure) the receiver's adapter deletes its temporary file.
- ``size`` is checked against the cap before the first chunk (:class:`TooLarge`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from .errors import RemoteProtocolError, UsageError

#: Bytes of file data in one ``file-chunk``. The largest that, with the message's
#: own fields, fits one APP message (60 KiB) and fills its padding bucket exactly
#: (60 KiB is a Padmé size): per message costs (seal, frame, route, open, decode)
#: dominate in Python, so fewer and bigger chunks move more bytes per second, and
#: no chunk pays for padding.
CHUNK_SIZE = 60 * 1024 - 128
#: Chunks a receiver lets the sender have in flight (about 1 MiB): enough to keep a
#: local relay busy; little enough that a live page queued behind them waits
#: milliseconds, and far below the relay's per-connection queue (4 MiB).
WINDOW = 16
MAX_WINDOW = 64
#: The largest file size the protocol carries (1 TiB); each side's cap is lower.
MAX_FILE_SIZE = 1 << 40
#: Default cap on a file either side sends or accepts (``STARMUX_MAX_FILE_SIZE``).
DEFAULT_CAP = 1 << 30
DIGEST_SIZE = 32
#: File bytes a node sends per second, at most. A relay closes a connection that
#: sends more than its ``bytes_per_second`` (default 64 MiB/s after a 128 MiB burst)
#: with 4010, and with it every channel on it: files stay below, leaving room for
#: everything else.
PACE_RATE = 48 * 1024 * 1024
PACE_BURST = 64 * 1024 * 1024


def file_digest() -> hashlib.blake2b:
    """The whole-file hash: BLAKE2b-256, personalised so it names its purpose."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"starmux-file")


class TransferFailed(RemoteProtocolError):
    """The peer broke the transfer's rules, or the file did not hash to its digest."""


class TooLarge(UsageError):
    """A file over the cap: refused before any chunk moves."""


class State(enum.StrEnum):
    WAITING = "waiting"  # asked or offered; no credit or chunk yet on this channel
    STREAMING = "streaming"
    PAUSED = "paused"  # the channel went away; resumes on the next one
    DONE = "done"
    FAILED = "failed"


class Trigger(enum.StrEnum):
    BEGIN = "begin"  # first credit (sender) or first chunk (receiver) on a channel
    CHUNK = "chunk"
    CREDIT = "credit"
    LOST = "lost"
    RESUME = "resume"
    FINISH = "finish"
    FAIL = "fail"


_LIVE = (State.WAITING, State.STREAMING, State.PAUSED)
#: (state, trigger) → new state. Everything not here raises: the table is the truth.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.WAITING, Trigger.BEGIN): State.STREAMING,
    (State.STREAMING, Trigger.BEGIN): State.STREAMING,  # a fresh fetch on this channel
    (State.STREAMING, Trigger.CHUNK): State.STREAMING,
    (State.STREAMING, Trigger.CREDIT): State.STREAMING,
    (State.WAITING, Trigger.LOST): State.PAUSED,
    (State.STREAMING, Trigger.LOST): State.PAUSED,
    (State.PAUSED, Trigger.LOST): State.PAUSED,
    (State.PAUSED, Trigger.RESUME): State.WAITING,
    (State.WAITING, Trigger.RESUME): State.WAITING,  # asked again before an answer
    (State.STREAMING, Trigger.RESUME): State.WAITING,
    (State.WAITING, Trigger.FINISH): State.DONE,  # an empty file, or all held already
    (State.STREAMING, Trigger.FINISH): State.DONE,
    **{(state, Trigger.FAIL): State.FAILED for state in _LIVE},
}


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return -(-size // chunk_size)


def chunk_span(index: int, size: int, chunk_size: int = CHUNK_SIZE) -> tuple[int, int]:
    """(byte offset, length) of chunk ``index`` of a ``size``-byte file."""
    start = index * chunk_size
    return start, min(chunk_size, size - start)


def check_size(size: int, cap: int) -> None:
    if not 0 <= size <= min(cap, MAX_FILE_SIZE):
        raise TooLarge(
            f"the file is {format_size(size)}; the limit is {format_size(cap)}",
            hint="raise it with STARMUX_MAX_FILE_SIZE (on the controller and on the machine)",
        )


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """``1073741824``, ``200M``, ``1G``, ``512K`` (binary units) → bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in units else (cleaned, "")
    if not number.isdigit() or unit not in units:
        raise UsageError(f"{text!r} is not a size", hint="write e.g. 1073741824, 500M or 2G")
    return min(int(number) * units[unit], MAX_FILE_SIZE)


class _Machine:
    """The shared state machine of both ends."""

    def __init__(self, size: int, chunk_size: int) -> None:
        if not 0 <= size <= MAX_FILE_SIZE or chunk_size < 1:
            raise UsageError("a file size must be 0..1 TiB and a chunk at least a byte")
        self.size = size
        self.chunk_size = chunk_size
        self.count = chunk_count(size, chunk_size)
        self.state = State.WAITING
        self.reason = ""

    def _move(self, trigger: Trigger) -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise TransferFailed(f"a transfer that is {self.state} cannot take {trigger}")
        self.state = new

    def fail(self, reason: str) -> TransferFailed:
        """Fail for good; returns the error for the caller to raise."""
        if self.state in _LIVE:
            self._move(Trigger.FAIL)
            self.reason = reason
        return TransferFailed(reason)

    def channel_lost(self) -> None:
        if self.state in _LIVE:
            self._move(Trigger.LOST)

    @property
    def finished(self) -> bool:
        return self.state in (State.DONE, State.FAILED)


@dataclass(frozen=True)
class Accepted:
    """A chunk the receiver took: write ``data`` at ``offset``; send ``credit`` (the
    new ``confirmed``) if not None; ``complete``: the whole file is in and verified."""

    offset: int
    data: bytes
    credit: int | None
    complete: bool


class Receiver(_Machine):
    def __init__(
        self,
        *,
        size: int,
        digest: bytes,
        cap: int,
        window: int = WINDOW,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        check_size(size, cap)
        if len(digest) != DIGEST_SIZE or not 1 <= window <= MAX_WINDOW:
            raise UsageError("a digest is 32 bytes and a window 1..64 chunks")
        super().__init__(size, chunk_size)
        self.digest = digest
        self.window = window
        self.received = 0  # chunks held, in order: the resume point
        self.bytes_received = 0  # every chunk byte taken, over all channels
        self._credited = 0
        self._asked = False  # request() was called: the held part is fixed from then on
        self._hash = file_digest()

    def hold(self, chunks: int, hashed: hashlib.blake2b) -> None:
        """Take the first ``chunks`` as held before anything moved (a download that an
        earlier process began: its file kept them); ``hashed`` has hashed exactly
        their bytes, so the whole-file check at the end still covers every byte."""
        if self.state is not State.WAITING or self.received or self._asked:
            raise UsageError("held chunks are given before the transfer starts")
        if not 0 <= chunks <= self.count:
            raise UsageError(f"{chunks} held chunks do not fit a file of {self.count}")
        self.received = chunks
        self._hash = hashed.copy()

    def request(self) -> int:
        """(Re)start on a channel: the chunk index to ask from (what we hold)."""
        self._move(Trigger.RESUME)
        self._asked = True
        self._credited = self.received
        if self.received == self.count:
            self._verify()
        return self.received

    def on_chunk(self, index: int, data: bytes) -> Accepted:
        if self.state is State.WAITING:
            self._move(Trigger.BEGIN)
        if self.state is not State.STREAMING:
            raise self.fail(f"a chunk arrived while the transfer is {self.state}")
        if index != self.received:
            raise self.fail(f"chunk {index} arrived where {self.received} was next")
        if index >= self.count or len(data) != chunk_span(index, self.size, self.chunk_size)[1]:
            raise self.fail(f"chunk {index} has the wrong length ({len(data)} bytes)")
        if index >= self._credited + self.window:
            raise self.fail(f"chunk {index} was sent without credit")
        self._move(Trigger.CHUNK)
        self._hash.update(data)
        self.received += 1
        self.bytes_received += len(data)
        complete = self.received == self.count
        credit = None
        if complete or self.received - self._credited >= max(1, self.window // 2):
            credit = self._credited = self.received
        if complete:
            self._verify()
        return Accepted(index * self.chunk_size, data, credit, complete)

    def _verify(self) -> None:
        if not hmac.compare_digest(self._hash.digest(), self.digest):
            raise self.fail("the file's hash does not match: not kept")
        self._move(Trigger.FINISH)


@dataclass(frozen=True)
class ChunkToSend:
    index: int
    offset: int
    length: int


class Sender(_Machine):
    def __init__(self, *, size: int, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__(size, chunk_size)
        self.next = 0
        self.confirmed = 0
        self.window = 0
        self.bytes_sent = 0  # over all channels: what a resume saves shows here
        self.starts: list[int] = []  # the chunk index of every (re)start

    def grant(self, confirmed: int, window: int) -> None:
        """Credit from the receiver (a ``fetch-file``'s offset and window, or a
        ``file-credit``): on a new channel it says where to start; later, how far
        the receiver got."""
        if not 0 <= confirmed <= self.count or not 1 <= window <= MAX_WINDOW:
            raise self.fail(f"credit out of range ({confirmed}, window {window})")
        if self.state is State.WAITING:
            self._move(Trigger.BEGIN)
            self.next = self.confirmed = confirmed
            self.starts.append(confirmed)
        elif self.state is State.STREAMING:
            if not self.confirmed <= confirmed <= self.next:
                raise self.fail(f"credit {confirmed} outside {self.confirmed}..{self.next}")
            self._move(Trigger.CREDIT)
            self.confirmed = confirmed
        else:
            raise self.fail(f"credit arrived while the transfer is {self.state}")
        self.window = window
        if self.confirmed == self.count:
            self._move(Trigger.FINISH)

    def restart(self) -> None:
        """A new channel (or a new ``fetch-file``): wait for where to start."""
        self._move(Trigger.RESUME)

    def next_chunk(self) -> ChunkToSend | None:
        """The next chunk the credit allows, or None (wait for credit)."""
        if self.state is not State.STREAMING or self.next >= self.count:
            return None
        if self.next >= self.confirmed + self.window:
            return None
        index = self.next
        self.next += 1
        offset, length = chunk_span(index, self.size, self.chunk_size)
        self.bytes_sent += length
        return ChunkToSend(index, offset, length)


class Pace:
    """A token bucket for file bytes (``now`` in seconds, from any monotonic clock):
    :meth:`wait` says how long until ``size`` more bytes may go, :meth:`take` spends
    them (it may go below zero: the next wait is longer)."""

    def __init__(self, rate: float = PACE_RATE, burst: float = PACE_BURST) -> None:
        if rate <= 0 or burst < CHUNK_SIZE:
            raise UsageError("a pace needs a positive rate and a burst of a chunk at least")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def wait(self, size: int, now: float) -> float:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return max(0.0, (size - self._tokens) / self.rate)

    def take(self, size: int) -> None:
        self._tokens -= size
