"""The controller's file transfers: artifacts fetched, attachments sent (in the agent).

The rules (credit, order, resume, hash) are :mod:`starmux.transfer`'s; this module
reads and writes files. A :class:`ControllerTransfers` lives as long as the agent,
so a transfer outlives the relay connection it started on: the agent's
:class:`~starmux.client.live.LiveController` (one per connection) hands it every
transfer message and tells it when a machine's channel opens, and the transfer
resumes there from the chunks already held (:meth:`channel_open`).

Invariants:
- A download is written to ``DEST.starmux-part`` next to ``DEST`` (0600) and
  renamed to ``DEST`` only after the whole file's hash matched; on a failure
  (refused, hash mismatch) the temporary file is removed and ``DEST`` is untouched.
- An interrupted download (the agent stopped or restarted, the ``get`` went away)
  keeps its part and, in ``DEST.starmux-resume``, which artifact of which machine
  it holds (size, digest, chunk size). A later ``get`` of the same artifact to the
  same ``DEST`` re-hashes the whole chunks of the part and asks the machine only for
  the rest: bytes the part holds are never sent again, and the hash is still
  checked over the whole file at the end. A part that does not match is dropped.
- Sizes are checked against this controller's cap before anything moves: a
  download before the first ``fetch-file``, an upload before the ``offer-file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from starmux.codec import Message
from starmux.errors import StarmuxError, UsageError
from starmux.transfer import (
    CHUNK_SIZE,
    WINDOW,
    Pace,
    Receiver,
    Sender,
    TransferFailed,
    check_size,
    file_digest,
)
from starmux.transfer_messages import (
    FetchFile,
    FileChunk,
    FileCredit,
    FileFailed,
    OfferFile,
    check_file_name,
)

#: Send a message to a machine over its current channel; False if it has none now.
Send = Callable[[bytes, Message], Awaitable[bool]]
Progress = Callable[[int, int], None]
PART_SUFFIX = ".starmux-part"
#: Next to a kept part: what it is part of (JSON), so only that artifact resumes it.
RESUME_SUFFIX = ".starmux-resume"


class TransferError(StarmuxError):
    """A transfer ended without the file (refused, failed, hash mismatch)."""


@dataclass
class _Download:
    machine: bytes
    transfer: str
    artifact: str
    receiver: Receiver
    part: Path
    file: BinaryIO
    done: asyncio.Future[None]
    progress: Progress | None
    resumed_at: list[int] = field(default_factory=list)  # byte offsets of every request


@dataclass
class _Upload:
    machine: bytes
    transfer: str
    offer: OfferFile
    sender: Sender
    file: BinaryIO
    done: asyncio.Future[None]
    credit: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    digest: bytes
    bytes_received: int
    resumed_at: tuple[int, ...]  # byte offsets where a later request resumed
    kept: int  # bytes an earlier, interrupted `get` had written (not fetched again)
    seconds: float


def _private_file(path: Path, flags: int) -> BinaryIO:
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb" if flags & os.O_WRONLY else "rb")


def _write_new(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    with _private_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL) as file:
        file.write(data)


def hash_file(path: Path) -> tuple[int, bytes]:
    digest = file_digest()
    size = 0
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            size += len(block)
            digest.update(block)
    return size, digest.digest()


def _resume_info(machine: bytes, artifact: str, size: int, digest: bytes) -> bytes:
    fields = {
        "machine": machine.hex(),
        "artifact": artifact,
        "size": size,
        "digest": digest.hex(),
        "chunk_size": CHUNK_SIZE,
    }
    return json.dumps(fields, sort_keys=True).encode()


def _held_part(part: Path, info: Path, expected: bytes) -> tuple[int, hashlib.blake2b] | None:
    """What a kept part holds of the download ``expected`` describes: its whole chunks
    (cut to them) and their hash; None (both files removed) if it is not that one."""
    try:
        plain = not part.is_symlink() and not info.is_symlink() and part.is_file()
        matches = plain and info.read_bytes()[:4096] == expected
    except OSError:
        matches = False
    if not matches:
        part.unlink(missing_ok=True)
        info.unlink(missing_ok=True)
        return None
    size = json.loads(expected)["size"]
    held_bytes = part.stat().st_size
    chunks = size // CHUNK_SIZE + (1 if size % CHUNK_SIZE else 0)
    held = min(chunks, held_bytes // CHUNK_SIZE)
    if held_bytes >= size:
        held = chunks  # the last chunk may be short
    kept = min(held * CHUNK_SIZE, size)
    os.truncate(part, kept)  # a chunk cut short is asked for again
    digest = file_digest()
    with _private_file(part, os.O_RDONLY) as file:
        remaining = kept
        while remaining and (block := file.read(min(remaining, 1 << 20))):
            remaining -= len(block)
            digest.update(block)
    return held, digest


class ControllerTransfers:
    def __init__(self, *, cap: int) -> None:
        self.cap = cap
        #: the current connection's sender (set by the LiveController while it runs)
        self.send: Send | None = None
        self._downloads: dict[tuple[bytes, str], _Download] = {}
        self._uploads: dict[tuple[bytes, str], _Upload] = {}
        self.pace = Pace()

    # --- from the live controller -----------------------------------------------------

    async def channel_open(self, machine: bytes) -> None:
        """A new channel to ``machine``: its transfers (re)start from what is held."""
        for (key, _), download in list(self._downloads.items()):
            if key == machine:
                await self._request(download)
        for (key, _), upload in list(self._uploads.items()):
            if key == machine:
                await self._offer(upload)

    def channel_lost(self, machine: bytes) -> None:
        for (key, _), download in self._downloads.items():
            if key == machine:
                download.receiver.channel_lost()
        for (key, _), upload in self._uploads.items():
            if key == machine:
                upload.sender.channel_lost()

    async def on_message(self, machine: bytes, message: Message) -> None:
        transfer = str(getattr(message, "transfer", ""))
        download = self._downloads.get((machine, transfer))
        upload = self._uploads.get((machine, transfer))
        if isinstance(message, FileFailed):
            reason = f"the machine ended the transfer: {message.reason}"
            for entry in (download, upload):
                if entry is not None:
                    self._finish(entry, TransferError(reason))
            return
        try:
            if isinstance(message, FileChunk) and download is not None:
                await self._chunk(download, message)
            elif isinstance(message, FileCredit) and upload is not None:
                upload.sender.grant(message.confirmed, message.window)
                upload.credit.set()
                if upload.sender.finished:
                    self._finish(upload, None)
        except TransferFailed as exc:
            for entry in (download, upload):
                if entry is not None:
                    self._finish(entry, TransferError(exc.message))
            if self.send is not None:
                await self.send(machine, FileFailed(transfer, exc.message[:300]))

    # --- downloads ----------------------------------------------------------------------

    async def download(
        self,
        machine: bytes,
        artifact: str,
        *,
        size: int,
        digest: bytes,
        dest: Path,
        progress: Progress | None = None,
    ) -> Fetched:
        receiver = Receiver(size=size, digest=digest, cap=self.cap)  # TooLarge: nothing sent
        part = dest.with_name(dest.name + PART_SUFFIX)
        info = dest.with_name(dest.name + RESUME_SUFFIX)
        expected = _resume_info(machine, artifact, size, digest)
        held = await asyncio.to_thread(_held_part, part, info, expected)
        if held is not None:
            receiver.hold(*held)
            file = _private_file(part, os.O_WRONLY | os.O_APPEND)
        else:
            file = _private_file(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            _write_new(info, expected)
        transfer = "t-" + secrets.token_hex(8)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = _Download(machine, transfer, artifact, receiver, part, file, done, progress)
        self._downloads[(machine, transfer)] = entry
        started = time.monotonic()
        try:
            await self._request(entry)
            await done
            os.replace(part, dest)
            info.unlink(missing_ok=True)
        except (TransferError, TransferFailed):
            part.unlink(missing_ok=True)
            info.unlink(missing_ok=True)
            raise
        finally:
            self._downloads.pop((machine, transfer), None)
            with contextlib.suppress(OSError):
                entry.file.flush()  # what is written is kept for the next `get`
                entry.file.close()
            if not done.done():  # cancelled (the command went away): tell the machine
                done.cancel()
                if self.send is not None:
                    with contextlib.suppress(StarmuxError):
                        await self.send(machine, FileFailed(transfer, "cancelled"))
        return Fetched(
            dest,
            size,
            digest,
            receiver.bytes_received,
            tuple(entry.resumed_at[1:]),
            (held[0] * CHUNK_SIZE if held else 0),
            time.monotonic() - started,
        )

    async def _request(self, download: _Download) -> None:
        if download.done.done():
            return
        start = download.receiver.request()
        if download.receiver.finished:
            self._finish(download, None)
            return
        if self.send is None:
            return
        offset = start * download.receiver.chunk_size
        fetch = FetchFile(download.transfer, download.artifact, start, download.receiver.window)
        if await self.send(download.machine, fetch):
            download.resumed_at.append(offset)

    async def _chunk(self, download: _Download, chunk: FileChunk) -> None:
        accepted = download.receiver.on_chunk(chunk.index, chunk.data)
        download.file.write(accepted.data)  # in order: the file position is the offset
        if download.progress is not None:
            download.progress(accepted.offset + len(accepted.data), download.receiver.size)
        if accepted.complete:
            download.file.flush()
            os.fsync(download.file.fileno())
            self._finish(download, None)
        if accepted.credit is not None and self.send is not None:
            credit = FileCredit(download.transfer, accepted.credit, download.receiver.window)
            await self.send(download.machine, credit)

    # --- uploads --------------------------------------------------------------------------

    def check_upload(self, path: Path) -> int:
        """The size of a file that may be sent (else UsageError: nothing is sent)."""
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UsageError(f"cannot read the attachment {path}: {exc.strerror}") from exc
        if not path.is_file():
            raise UsageError(f"the attachment {path} is not a regular file")
        check_file_name(path.name)
        check_size(size, self.cap)
        return size

    async def upload(self, machine: bytes, path: Path, progress: Progress | None = None) -> str:
        """Send ``path`` to ``machine``; returns its transfer id once the machine holds it
        (hash checked there)."""
        self.check_upload(path)
        size, digest = await asyncio.to_thread(hash_file, path)
        check_size(size, self.cap)
        transfer = "t-" + secrets.token_hex(8)
        file = _private_file(path, os.O_RDONLY)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        offer = OfferFile(transfer, path.name, size, digest)
        entry = _Upload(machine, transfer, offer, Sender(size=size), file, done)
        self._uploads[(machine, transfer)] = entry
        try:
            await self._offer(entry)
            while not done.done():
                entry.credit.clear()
                while (chunk := entry.sender.next_chunk()) is not None:
                    if wait := self.pace.wait(chunk.length, time.monotonic()):
                        await asyncio.sleep(wait)  # the relay's byte budget (see Pace)
                    self.pace.take(chunk.length)
                    entry.file.seek(chunk.offset)
                    data = entry.file.read(chunk.length)
                    if self.send is None or not await self.send(
                        machine, FileChunk(transfer, chunk.index, data)
                    ):
                        break  # the channel is gone: a new one re-offers
                    if progress is not None:
                        progress(chunk.offset + chunk.length, size)
                credit = asyncio.ensure_future(entry.credit.wait())
                waits: set[asyncio.Future[Any]] = {done, credit}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                credit.cancel()
            done.result()
        finally:
            self._uploads.pop((machine, transfer), None)
            file.close()
        return transfer

    async def _offer(self, upload: _Upload) -> None:
        if upload.done.done() or self.send is None:
            return
        if upload.sender.state.value != "waiting":
            upload.sender.restart()
        await self.send(upload.machine, upload.offer)

    # ---------------------------------------------------------------------------------------

    def _finish(self, entry: _Download | _Upload, error: StarmuxError | None) -> None:
        if entry.done.done():
            return
        if error is None:
            entry.done.set_result(None)
        else:
            entry.done.set_exception(error)
        if isinstance(entry, _Upload):
            entry.credit.set()


__all__ = ["WINDOW", "ControllerTransfers", "Fetched", "TransferError", "hash_file"]
