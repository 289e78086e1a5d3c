"""The machine's file store and transfer endpoints on real files and a real event log
(no network): roots, caps, resumed uploads, attachments placed privately."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from starmux.daemon.eventlog import EventLog
from starmux.daemon.transfers import UNCLAIMED_UPLOAD_TTL, MachineTransfers, unclaimed_upload_ttl
from starmux.errors import UsageError
from starmux.messages import APP
from starmux.transfer import CHUNK_SIZE, file_digest
from starmux.transfer_messages import (
    ArtifactPublished,
    FetchFile,
    FileChunk,
    FileCredit,
    FileFailed,
    OfferFile,
)

KEY = b"c" * 32


@pytest_asyncio.fixture
async def machine(tmp_path: Path) -> AsyncIterator[MachineTransfers]:
    log = await EventLog.open(tmp_path / "daemon.db")
    root = tmp_path / "root"
    root.mkdir()
    transfers = MachineTransfers(
        tmp_path / "home", log, allowed_roots=lambda: [root], cap=3 * CHUNK_SIZE, clock=lambda: 1.0
    )
    (tmp_path / "home").mkdir(mode=0o700)
    yield transfers
    transfers.close()
    await log.close()


def digest(data: bytes) -> bytes:
    hashed = file_digest()
    hashed.update(data)
    return hashed.digest()


async def test_a_published_copy_is_served_in_chunks_and_logged(
    machine: MachineTransfers, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)
    source = tmp_path / "root" / "out.bin"
    source.write_bytes(data)
    artifact = await machine.publish(session="s-1", path=str(source), name=None)
    source.write_bytes(b"changed later")  # the published copy does not change
    assert artifact.digest == digest(data) and artifact.size == len(data)
    assert os.stat(artifact.path).st_mode & 0o777 == 0o600
    events = await machine.log.read_after(0, limit=10)
    assert APP.decode(events[-1].body) == ArtifactPublished(
        artifact.id, "out.bin", len(data), digest(data)
    )
    assert machine.on_message(KEY, FetchFile("t-1", artifact.id, 1, 4)) == []
    chunks = []
    while (chunk := machine.next_chunk(KEY)) is not None:
        chunks.append(chunk)
    assert [c.index for c in chunks] == [1, 2]  # resumed at chunk 1: chunk 0 not resent
    assert b"".join(c.data for c in chunks) == data[CHUNK_SIZE:]
    assert machine.next_chunk(b"d" * 32) is None  # another controller has no transfer


async def test_paths_outside_the_roots_and_links_out_of_them_are_refused(
    machine: MachineTransfers, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    link = tmp_path / "root" / "innocent.txt"
    link.symlink_to(outside)
    for path in (str(outside), str(link), "/etc/hostname"):
        with pytest.raises(UsageError, match="not inside an allowed root"):
            await machine.publish(session="s-1", path=path, name=None)
    big = tmp_path / "root" / "big.bin"
    big.write_bytes(b"x" * (3 * CHUNK_SIZE + 1))
    with pytest.raises(UsageError, match="limit"):
        await machine.publish(session="s-1", path=str(big), name=None)
    assert not list((tmp_path / "home").glob("artifacts/*"))


async def test_an_offer_over_the_machines_cap_is_refused_before_any_chunk(
    machine: MachineTransfers,
) -> None:
    replies = machine.on_message(KEY, OfferFile("t-9", "big.bin", 3 * CHUNK_SIZE + 1, bytes(32)))
    assert len(replies) == 1 and isinstance(replies[0], FileFailed)
    assert "refused by the machine" in replies[0].reason and "limit" in replies[0].reason


async def test_an_upload_resumes_and_lands_private_in_the_sessions_folder(
    machine: MachineTransfers, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 9)
    offer = OfferFile("t-2", "data.csv", len(data), digest(data))
    assert machine.on_message(KEY, offer) == [FileCredit("t-2", 0, 16)]
    machine.on_message(KEY, FileChunk("t-2", 0, data[:CHUNK_SIZE]))
    machine.channel_lost(KEY)  # chunk 1 was lost in flight
    assert machine.on_message(KEY, offer) == [FileCredit("t-2", 1, 16)]  # resume at 1
    machine.on_message(KEY, FileChunk("t-2", 1, data[CHUNK_SIZE : 2 * CHUNK_SIZE]))
    assert machine.on_message(KEY, FileChunk("t-2", 2, data[2 * CHUNK_SIZE :])) == [
        FileCredit("t-2", 3, 16)
    ]
    with pytest.raises(UsageError, match="did not arrive"):
        machine.check_attachments(b"d" * 32, ["t-2"])  # only the uploader's session gets it
    cwd = tmp_path / "root"
    folder = machine.place_attachments(KEY, ["t-2"], cwd, "s-7")
    assert folder == cwd / ".starmux" / "attachments" / "s-7"
    assert (folder / "data.csv").read_bytes() == data
    assert os.stat(folder / "data.csv").st_mode & 0o777 == 0o600
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert (cwd / ".starmux" / ".gitignore").read_text() == "*\n"


async def test_an_upload_that_does_not_hash_right_is_not_kept(
    machine: MachineTransfers, tmp_path: Path
) -> None:
    data = b"payload"
    machine.on_message(KEY, OfferFile("t-3", "x.txt", len(data), digest(b"other!!")))
    replies = machine.on_message(KEY, FileChunk("t-3", 0, data))
    assert isinstance(replies[0], FileFailed) and "hash" in replies[0].reason
    assert not list((tmp_path / "home" / "uploads").iterdir())
    with pytest.raises(UsageError):
        machine.check_attachments(KEY, ["t-3"])


def test_the_unclaimed_upload_bound_is_read_from_the_environment() -> None:
    assert unclaimed_upload_ttl({}) == UNCLAIMED_UPLOAD_TTL == 3600.0
    assert unclaimed_upload_ttl({"STARMUX_UNCLAIMED_UPLOAD_TTL": "600"}) == 600.0
    for bad in ("0", "-5", "1e9", "an hour", "nan"):
        with pytest.raises(UsageError, match="STARMUX_UNCLAIMED_UPLOAD_TTL"):
            unclaimed_upload_ttl({"STARMUX_UNCLAIMED_UPLOAD_TTL": bad})
