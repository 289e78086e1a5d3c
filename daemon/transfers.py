"""The machine's files: published artifacts, served in chunks; attachments received.

The rules (credit, order, resume, hash) are :mod:`starmux.transfer`'s; this module
reads and writes the files and keeps them per controller.

- **Artifacts**: ``starmux artifact add PATH`` (local API) publishes a copy of a
  file inside an allowed root: copied (hashing as it goes) to
  ``HOME/artifacts/ID`` (0600, temporary file then rename) so a later change of the
  original cannot change what was published, then an ``artifact-published`` event
  in the session's log tells every controller.
- **Downloads**: a ``fetch-file`` makes a :class:`~starmux.transfer.Sender` for that
  controller; the live service asks :meth:`MachineTransfers.next_chunk` for a chunk
  only when nothing else waits for that controller.
- **Uploads** (attachments): an ``offer-file`` within the cap is staged in
  ``HOME/uploads`` (0600, temporary name) and kept per controller across
  reconnects; when its hash checks out it waits for the ``start-session`` that
  names it, which moves it into the session's attachments folder. One that no
  ``start-session`` claims (the run was refused, the controller went away) is
  deleted once it has been idle for ``unclaimed_ttl`` (``STARMUX_UNCLAIMED_UPLOAD_TTL``,
  1 h by default): staged files never pile up until the daemon restarts.

Invariants: a path from a session is resolved (symlinks too) before the allowed
roots are checked; nothing of a failed or unverified upload is kept; each
controller reaches only its own uploads and transfers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from starmux.codec import Message
from starmux.errors import StarmuxError, UsageError
from starmux.messages import APP
from starmux.transfer import (
    CHUNK_SIZE,
    DEFAULT_CAP,
    WINDOW,
    Pace,
    Receiver,
    Sender,
    TransferFailed,
    check_size,
    file_digest,
    parse_size,
)
from starmux.transfer_messages import (
    ArtifactPublished,
    FetchFile,
    FileChunk,
    FileCredit,
    FileFailed,
    OfferFile,
    check_file_name,
)

from .env_numbers import positive_number
from .eventlog import EventLog

ARTIFACTS_DIR = "artifacts"
UPLOADS_DIR = "uploads"
#: Inside the session's working directory: where its attachments are put.
ATTACHMENTS_DIR = ".starmux"
_COPY_BLOCK = 1 << 20
#: Transfers kept per controller (paused ones included); past it the oldest goes.
MAX_TRANSFERS = 32
#: How long an upload may sit unclaimed (no chunk, no offer, no start-session).
UNCLAIMED_UPLOAD_TTL = 3600.0


@dataclass(frozen=True)
class Artifact:
    id: str
    session: str
    name: str
    size: int
    digest: bytes
    path: Path


@dataclass
class _Outgoing:
    transfer: str
    sender: Sender
    file: BinaryIO | None  # closed while paused: an abandoned transfer holds no handle
    artifact: Artifact


@dataclass
class _Incoming:
    transfer: str
    name: str
    receiver: Receiver
    part: Path
    file: BinaryIO | None
    touched: float  # the clock when a controller last offered or sent a chunk of it
    starts: list[int] = field(default_factory=list)  # the chunk each offer resumed at


@dataclass
class _Peer:
    outgoing: dict[str, _Outgoing] = field(default_factory=dict)
    incoming: dict[str, _Incoming] = field(default_factory=dict)
    ready: dict[str, tuple[str, Path]] = field(default_factory=dict)  # transfer → name, path


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _open_private(path: Path, flags: int) -> BinaryIO:
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    mode = "r+b" if flags & os.O_RDWR else "wb" if flags & os.O_WRONLY else "rb"
    return typing.cast(BinaryIO, os.fdopen(fd, mode))


def inside_roots(path: str, roots: Sequence[Path]) -> Path:
    """The real path of an existing regular file inside an allowed root, or UsageError."""
    shown = ", ".join(str(root) for root in roots) or "none"
    given = Path(path).expanduser()
    if not given.is_absolute():
        raise UsageError(f"{path[:200]!r} is not an absolute path")
    try:
        real = given.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"{path[:200]} does not exist") from exc
    resolved = [Path(root).expanduser().resolve() for root in roots]
    if not any(real.is_relative_to(root) for root in resolved):
        raise UsageError(
            f"refusing {path[:200]}: it is not inside an allowed root (allowed roots: {shown})",
            hint="publish files from inside the daemon's --allow-root folders",
        )
    if not real.is_file():
        raise UsageError(f"{path[:200]} is not a regular file")
    return real


class MachineTransfers:
    def __init__(
        self,
        home: Path,
        log: EventLog,
        *,
        allowed_roots: Callable[[], Sequence[Path]],
        cap: int,
        clock: Callable[[], float],
        report: Callable[..., None] | None = None,
        unclaimed_ttl: float = UNCLAIMED_UPLOAD_TTL,
    ) -> None:
        #: the daemon's terminal (``Terminal.event``): a finished transfer is said there
        self.report = report
        self.home = home
        self.log = log
        self.allowed_roots = allowed_roots
        self.cap = cap
        self.clock = clock
        self.unclaimed_ttl = unclaimed_ttl
        self._peers: dict[bytes, _Peer] = {}
        #: (controller, transfer) → the timer that deletes the upload if left unclaimed
        self._expiry: dict[tuple[bytes, str], asyncio.TimerHandle] = {}
        #: one pace for the daemon's one relay connection, whoever the file is for
        self.pace = Pace()
        # Uploads live in memory: what a previous daemon staged can never be claimed.
        shutil.rmtree(home / UPLOADS_DIR, ignore_errors=True)
        #: called when a controller's sender may have a chunk to send now
        self.wake: Callable[[bytes], None] = lambda key: None

    # --- artifacts ------------------------------------------------------------------

    async def publish(self, *, session: str, path: str, name: str | None) -> Artifact:
        """Copy ``path`` into the artifact store and log its publication."""
        real = inside_roots(path, self.allowed_roots())
        shown_name = check_file_name(name if name else real.name)
        check_size(real.stat().st_size, self.cap)
        artifact_id = "a-" + secrets.token_hex(8)
        store = _private_dir(self.home / ARTIFACTS_DIR)
        size, digest = await asyncio.to_thread(self._copy, real, store, artifact_id)
        meta = {"session": session, "name": shown_name, "size": size, "digest": digest.hex()}
        _write_private(store / f"{artifact_id}.json", json.dumps(meta).encode())
        event = ArtifactPublished(artifact_id, shown_name, size, digest)
        await self.log.append(session, APP.encode(event), at=self.clock())
        return Artifact(artifact_id, session, shown_name, size, digest, store / artifact_id)

    def _copy(self, source: Path, store: Path, artifact_id: str) -> tuple[int, bytes]:
        part = store / f"{artifact_id}.part"
        digest = file_digest()
        size = 0
        with (
            source.open("rb") as src,
            _open_private(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL) as dst,
        ):
            while block := src.read(_COPY_BLOCK):
                size += len(block)
                check_size(size, self.cap)  # it grew while we copied
                digest.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(part, store / artifact_id)
        return size, digest.digest()

    def artifact(self, artifact_id: str) -> Artifact | None:
        store = self.home / ARTIFACTS_DIR
        try:
            meta = json.loads((store / f"{artifact_id}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return Artifact(
            artifact_id,
            meta["session"],
            meta["name"],
            int(meta["size"]),
            bytes.fromhex(meta["digest"]),
            store / artifact_id,
        )

    # --- messages from a controller -------------------------------------------------

    def on_message(self, key: bytes, message: Message) -> list[Message]:
        """A transfer message from controller ``key``; returns the replies to send."""
        peer = self._peers.setdefault(key, _Peer())
        try:
            if isinstance(message, FetchFile):
                return self._fetch(key, peer, message)
            if isinstance(message, FileCredit):
                outgoing = peer.outgoing.get(message.transfer)
                if outgoing is not None:
                    outgoing.sender.grant(message.confirmed, message.window)
                    self._sent_all(peer, outgoing)
                    self.wake(key)
                return []
            if isinstance(message, OfferFile):
                return self._offer(key, peer, message)
            if isinstance(message, FileChunk):
                return self._chunk(peer, message)
            if isinstance(message, FileFailed):
                self._drop(peer, message.transfer)
        except TransferFailed as exc:
            transfer = str(getattr(message, "transfer", ""))
            self._drop(peer, transfer)
            return [FileFailed(transfer, exc.message[:300])]
        return []

    def _fetch(self, key: bytes, peer: _Peer, fetch: FetchFile) -> list[Message]:
        outgoing = peer.outgoing.get(fetch.transfer)
        if outgoing is None or outgoing.artifact.id != fetch.artifact:
            artifact = self.artifact(fetch.artifact)
            if artifact is None:
                return [FileFailed(fetch.transfer, f"no artifact {fetch.artifact} on this machine")]
            self._drop(peer, fetch.transfer)
            while len(peer.outgoing) >= MAX_TRANSFERS:  # the oldest paused one goes
                self._drop(peer, next(iter(peer.outgoing)))
            outgoing = _Outgoing(fetch.transfer, Sender(size=artifact.size), None, artifact)
            peer.outgoing[fetch.transfer] = outgoing
        else:
            outgoing.sender.restart()
        if outgoing.file is None:
            try:
                outgoing.file = _open_private(outgoing.artifact.path, os.O_RDONLY)
            except OSError:
                self._drop(peer, fetch.transfer)
                return [FileFailed(fetch.transfer, f"artifact {fetch.artifact} is gone")]
        outgoing.sender.grant(fetch.offset, fetch.window)
        self._sent_all(peer, outgoing)
        self.wake(key)
        return []

    def _sent_all(self, peer: _Peer, outgoing: _Outgoing) -> None:
        if outgoing.sender.finished:
            sender = outgoing.sender
            if self.report is not None:
                self.report(
                    "artifact-sent",
                    f"artifact {outgoing.artifact.id} sent: {sender.bytes_sent} bytes for "
                    f"{sender.size}, started at chunks "
                    + ",".join(str(start) for start in sender.starts),
                    artifact=outgoing.artifact.id,
                    bytes_sent=sender.bytes_sent,
                    size=sender.size,
                    starts=sender.starts,
                )
            self._drop(peer, outgoing.transfer)

    def next_chunk(self, key: bytes) -> FileChunk | None:
        """A chunk for controller ``key`` if any transfer has credit (round robin) and
        the pace allows it now (else a wake is scheduled for when it does)."""
        peer = self._peers.get(key)
        if peer is None or not peer.outgoing:
            return None
        wait = self.pace.wait(CHUNK_SIZE, time.monotonic())
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self.wake, key)
            return None
        for transfer, outgoing in list(peer.outgoing.items()):
            if outgoing.file is None:
                continue
            chunk = outgoing.sender.next_chunk()
            if chunk is None:
                continue
            outgoing.file.seek(chunk.offset)
            data = outgoing.file.read(chunk.length)
            # Next time, start with the next transfer: several share the credit fairly.
            peer.outgoing[transfer] = peer.outgoing.pop(transfer)
            if len(data) != chunk.length:
                self._drop(peer, transfer)
                return None
            self.pace.take(chunk.length)
            return FileChunk(transfer, chunk.index, data)
        return None

    def _offer(self, key: bytes, peer: _Peer, offer: OfferFile) -> list[Message]:
        if offer.transfer in peer.incoming:
            peer.incoming[offer.transfer].touched = self.clock()
        if offer.transfer in peer.ready:
            received = peer.incoming.get(offer.transfer)
            count = received.receiver.count if received else 0
            return [FileCredit(offer.transfer, count, WINDOW)]
        incoming = peer.incoming.get(offer.transfer)
        if incoming is None and len(peer.incoming) >= MAX_TRANSFERS:
            return [FileFailed(offer.transfer, "too many attachments wait on this machine")]
        if incoming is None:
            try:
                receiver = Receiver(size=offer.size, digest=offer.digest, cap=self.cap)
            except StarmuxError as exc:
                return [FileFailed(offer.transfer, f"refused by the machine: {exc.message}")]
            uploads = _private_dir(self.home / UPLOADS_DIR)
            part = uploads / f"{secrets.token_hex(8)}.part"
            file = _open_private(part, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            incoming = _Incoming(offer.transfer, offer.name, receiver, part, file, self.clock())
            peer.incoming[offer.transfer] = incoming
            self._expire_later(key, offer.transfer, self.unclaimed_ttl)
        start = incoming.receiver.request()
        incoming.starts.append(start)
        if incoming.receiver.finished:
            self._complete(peer, incoming)
        return [FileCredit(offer.transfer, start, incoming.receiver.window)]

    def _chunk(self, peer: _Peer, chunk: FileChunk) -> list[Message]:
        incoming = peer.incoming.get(chunk.transfer)
        if incoming is None or incoming.file is None:
            return [FileFailed(chunk.transfer, "no such upload in progress")]
        accepted = incoming.receiver.on_chunk(chunk.index, chunk.data)
        incoming.touched = self.clock()
        incoming.file.seek(accepted.offset)
        incoming.file.write(accepted.data)
        replies: list[Message] = []
        if accepted.complete:
            self._complete(peer, incoming)
        if accepted.credit is not None:
            replies.append(FileCredit(chunk.transfer, accepted.credit, incoming.receiver.window))
        return replies

    def _complete(self, peer: _Peer, incoming: _Incoming) -> None:
        if incoming.file is not None:
            incoming.file.flush()
            os.fsync(incoming.file.fileno())
            incoming.file.close()
            incoming.file = None
        peer.ready[incoming.transfer] = (incoming.name, incoming.part)
        if self.report is not None:
            self.report(
                "attachment-received",
                f"attachment {incoming.name} received: {incoming.receiver.size} bytes, "
                "offers answered from chunks " + ",".join(map(str, incoming.starts)),
                transfer=incoming.transfer,
                size=incoming.receiver.size,
                starts=incoming.starts,
            )

    def _expire_later(self, key: bytes, transfer: str, delay: float) -> None:
        timer = asyncio.get_running_loop().call_later(
            delay, self._expire_if_unclaimed, key, transfer
        )
        old = self._expiry.pop((key, transfer), None)
        if old is not None:
            old.cancel()
        self._expiry[(key, transfer)] = timer

    def _expire_if_unclaimed(self, key: bytes, transfer: str) -> None:
        """An upload's timer: delete it if it sat idle for the whole bound (else wait
        for the rest of the bound from its last activity)."""
        self._expiry.pop((key, transfer), None)
        peer = self._peers.get(key)
        incoming = peer.incoming.get(transfer) if peer is not None else None
        if peer is None or incoming is None:
            return
        idle = self.clock() - incoming.touched
        if idle < self.unclaimed_ttl:
            self._expire_later(key, transfer, self.unclaimed_ttl - idle)
            return
        staged = peer.ready.pop(transfer, None) is not None
        self._drop(peer, transfer)
        if self.report is not None:
            self.report(
                "attachment-expired",
                f"attachment {incoming.name} deleted: "
                f"{'received' if staged else 'partly received'} but not claimed by a "
                f"session for {self.unclaimed_ttl:g} s",
                transfer=transfer,
                size=incoming.receiver.size,
            )

    def _drop(self, peer: _Peer, transfer: str) -> None:
        outgoing = peer.outgoing.pop(transfer, None)
        if outgoing is not None and outgoing.file is not None:
            outgoing.file.close()
        incoming = peer.incoming.get(transfer)
        if incoming is not None and transfer not in peer.ready:
            del peer.incoming[transfer]
            if incoming.file is not None:
                incoming.file.close()
            incoming.part.unlink(missing_ok=True)

    def channel_lost(self, key: bytes) -> None:
        """The controller's channel went away: its downloads and uploads pause (a
        ``fetch-file`` or ``offer-file`` on its next channel resumes them)."""
        peer = self._peers.get(key)
        if peer is None:
            return
        for outgoing in peer.outgoing.values():
            outgoing.sender.channel_lost()
            if outgoing.file is not None:
                outgoing.file.close()
                outgoing.file = None
        for incoming in peer.incoming.values():
            incoming.receiver.channel_lost()

    # --- attachments ----------------------------------------------------------------

    def check_attachments(self, key: bytes, transfers: Sequence[str]) -> None:
        peer = self._peers.get(key, _Peer())
        missing = [t for t in transfers if t not in peer.ready]
        if missing:
            raise UsageError(
                f"the attachment(s) {', '.join(missing)[:200]} did not arrive on this machine",
                hint="run the command again (its attachments are sent again)",
            )

    def place_attachments(
        self, key: bytes, transfers: Sequence[str], cwd: Path, session: str
    ) -> Path:
        """Move the uploads into ``cwd/.starmux/attachments/SESSION`` (0700; files
        0600, renamed into place); returns that folder."""
        self.check_attachments(key, transfers)
        peer = self._peers[key]
        base = _private_dir(cwd / ATTACHMENTS_DIR)
        ignore = base / ".gitignore"
        if not ignore.exists():
            _write_private(ignore, b"*\n")  # never committed by accident
        folder = _private_dir(base / "attachments" / session)
        for transfer in transfers:
            name, part = peer.ready.pop(transfer)
            peer.incoming.pop(transfer, None)
            timer = self._expiry.pop((key, transfer), None)
            if timer is not None:
                timer.cancel()
            target = folder / name
            temporary = folder / f".{name[:200]}.{secrets.token_hex(4)}.part"
            try:
                os.replace(part, temporary)
            except OSError:  # another file system: copy, then the same rename
                shutil.copyfile(part, temporary)
                part.unlink(missing_ok=True)
            os.chmod(temporary, 0o600)
            os.replace(temporary, target)
        return folder

    def close(self) -> None:
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        for peer in self._peers.values():
            for outgoing in peer.outgoing.values():
                if outgoing.file is not None:
                    with contextlib.suppress(OSError):
                        outgoing.file.close()
            for incoming in peer.incoming.values():
                if incoming.file is not None:
                    with contextlib.suppress(OSError):
                        incoming.file.close()
        self._peers.clear()


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with _open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL) as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def file_size_cap(environ: Mapping[str, str] = os.environ) -> int:
    """The largest file this daemon publishes or accepts: ``STARMUX_MAX_FILE_SIZE``
    (e.g. ``500M``, ``2G``), read once at start; 1 GiB by default."""
    text = environ.get("STARMUX_MAX_FILE_SIZE", "")
    return parse_size(text) if text else DEFAULT_CAP


def unclaimed_upload_ttl(environ: Mapping[str, str] = os.environ) -> float:
    """How long a staged upload may wait for its ``start-session``:
    ``STARMUX_UNCLAIMED_UPLOAD_TTL`` in seconds (e.g. ``600``), read once at start;
    1 h by default."""
    return positive_number(
        environ,
        "STARMUX_UNCLAIMED_UPLOAD_TTL",
        default=UNCLAIMED_UPLOAD_TTL,
        upper=30 * 86400,
        what="a number of seconds",
        hint="give 1..2592000 (30 days), e.g. 3600",
    )
