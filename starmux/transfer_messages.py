"""File transfer messages on the :data:`~starmux.messages.APP` codec (inside Noise_KK).

The rules that order them are :mod:`starmux.transfer`'s state machine. Channel
messages (not commands: they are not kept in an outbox; a resume re-asks):

- ``fetch-file`` (:class:`FetchFile`), controller → machine: send me this artifact
  from chunk ``offset`` with ``window`` chunks of credit.
- ``offer-file`` (:class:`OfferFile`), controller → machine: I have this attachment
  for you; the machine answers with ``file-credit`` (or ``file-failed``).
- ``file-chunk`` (:class:`FileChunk`), either way: chunk ``index`` of a transfer.
- ``file-credit`` (:class:`FileCredit`), receiver → sender: I hold ``confirmed``
  chunks; you may send up to ``confirmed + window``.
- ``file-failed`` (:class:`FileFailed`), either way: this transfer is over.

And a logged event, ``artifact-published`` (:class:`ArtifactPublished`): a session
published a file (``starmux artifact add``); controllers list and fetch it by id.

Every name a machine sends is checked like a title: one line, no control or format
characters (it reaches a terminal and a file name), no path separators.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Annotated

from .codec import Message, Range
from .errors import UsageError
from .messages import APP, check_id
from .transfer import CHUNK_SIZE, DIGEST_SIZE, MAX_FILE_SIZE, MAX_WINDOW

__all__ = [
    "ArtifactPublished",
    "FetchFile",
    "FileChunk",
    "FileCredit",
    "FileFailed",
    "OfferFile",
    "check_file_name",
]

FileSize = Annotated[int, Range(0, MAX_FILE_SIZE)]
ChunkIndex = Annotated[int, Range(0, MAX_FILE_SIZE)]
Window = Annotated[int, Range(1, MAX_WINDOW)]
MAX_NAME = 255  # bytes of UTF-8, as most file systems allow
MAX_REASON = 300
#: Characters a terminal acts on (ESC, bidi overrides...) or that break a line.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def check_file_name(name: str) -> str:
    """A file name usable on both ends: no directories, nothing a terminal acts on."""
    if not 1 <= len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME or name in (".", ".."):
        raise UsageError(f"a file name must be 1-{MAX_NAME} bytes, not . or ..")
    if any(ch in "/\\" or unicodedata.category(ch) in _UNPRINTABLE for ch in name):
        raise UsageError(f"the file name {name[:80]!r} has a path separator or control character")
    return name


def _check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_SIZE:
        raise UsageError(f"a file digest is {DIGEST_SIZE} bytes")


@APP.register
@dataclass(frozen=True)
class FetchFile(Message):
    KIND = "fetch-file"
    transfer: str
    artifact: str
    offset: ChunkIndex
    window: Window

    def __post_init__(self) -> None:
        check_id(self.transfer, "transfer id")
        check_id(self.artifact, "artifact id")


@APP.register
@dataclass(frozen=True)
class OfferFile(Message):
    KIND = "offer-file"
    transfer: str
    name: str
    size: FileSize
    digest: bytes

    def __post_init__(self) -> None:
        check_id(self.transfer, "transfer id")
        check_file_name(self.name)
        _check_digest(self.digest)


@APP.register
@dataclass(frozen=True)
class FileChunk(Message):
    KIND = "file-chunk"
    transfer: str
    index: ChunkIndex
    data: bytes

    def __post_init__(self) -> None:
        check_id(self.transfer, "transfer id")
        if len(self.data) > CHUNK_SIZE:
            raise UsageError(f"a chunk carries at most {CHUNK_SIZE} bytes")


@APP.register
@dataclass(frozen=True)
class FileCredit(Message):
    KIND = "file-credit"
    transfer: str
    confirmed: ChunkIndex
    window: Window

    def __post_init__(self) -> None:
        check_id(self.transfer, "transfer id")


@APP.register
@dataclass(frozen=True)
class FileFailed(Message):
    KIND = "file-failed"
    transfer: str
    reason: str

    def __post_init__(self) -> None:
        check_id(self.transfer, "transfer id")
        if len(self.reason) > MAX_REASON:
            raise UsageError(f"a reason is at most {MAX_REASON} characters")
        if any(unicodedata.category(ch) in _UNPRINTABLE for ch in self.reason):
            raise UsageError("a reason is one line without control or format characters")


@APP.register
@dataclass(frozen=True)
class ArtifactPublished(Message):
    KIND = "artifact-published"
    artifact: str
    name: str
    size: FileSize
    digest: bytes

    def __post_init__(self) -> None:
        check_id(self.artifact, "artifact id")
        check_file_name(self.name)
        _check_digest(self.digest)


TRANSFER_MESSAGES = (FetchFile, OfferFile, FileChunk, FileCredit, FileFailed)
