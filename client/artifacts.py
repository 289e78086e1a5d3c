"""Artifacts and attachments as the agent's operations see them: list a session's
artifacts from the cache, fetch one, send a run's attachments first.

The transfers themselves are :mod:`starmux.client.transfers`'; this module finds
what to transfer (the ``artifact-published`` events in the cache) and where.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starmux.errors import StarmuxError
from starmux.messages import APP, LoggedEvent
from starmux.transfer import DEFAULT_CAP, format_size, parse_size
from starmux.transfer_messages import ArtifactPublished

from .cache import Cache
from .transfers import ControllerTransfers, Fetched, Progress


def file_size_cap(environ: Any = os.environ) -> int:
    """This controller's cap on files it fetches or sends: ``STARMUX_MAX_FILE_SIZE``
    (e.g. ``500M``), read once when the agent (or a command) starts; 1 GiB default."""
    text = environ.get("STARMUX_MAX_FILE_SIZE", "")
    return parse_size(text) if text else DEFAULT_CAP


def published(event: LoggedEvent) -> ArtifactPublished | None:
    try:
        message = APP.decode(event.body)
    except StarmuxError:
        return None
    return message if isinstance(message, ArtifactPublished) else None


def artifact_json(
    machine_name: str, event: LoggedEvent, artifact: ArtifactPublished
) -> dict[str, Any]:
    return {
        "id": artifact.artifact,
        "name": artifact.name,
        "size": artifact.size,
        "digest": artifact.digest.hex(),
        "at": event.at,
        "session": event.session,
        "machine": machine_name,
    }


async def session_artifacts(
    cache: Cache, session: str
) -> list[tuple[LoggedEvent, ArtifactPublished]]:
    found = []
    for event in await cache.session_events(session):
        artifact = published(event)
        if artifact is not None:
            found.append((event, artifact))
    return found


async def find_artifact(
    cache: Cache, artifact_id: str
) -> tuple[bytes, LoggedEvent, ArtifactPublished] | None:
    """The machine and event that published ``artifact_id`` (ids are the machine's,
    so the same id from two machines is ambiguous: the first is taken)."""
    rows = await cache.db.execute_fetchall(
        "SELECT machine, seq, at, session, body FROM events WHERE instr(body, ?) > 0 ORDER BY at",
        (artifact_id.encode(),),
    )
    for machine, seq, at, session, body in rows:
        event = LoggedEvent(seq, at, session, bytes(body))
        artifact = published(event)
        if artifact is not None and artifact.artifact == artifact_id:
            return bytes(machine), event, artifact
    return None


def destination(output: str, name: str, *, force: bool) -> Path:
    """Where a fetched file goes: ``output``, or ``output/NAME`` for a folder."""
    path = Path(output)
    if path.is_dir():
        path = path / name
    if (path.exists() or path.is_symlink()) and not force:
        raise FileExistsError(str(path))
    return path


async def fetch(
    transfers: ControllerTransfers,
    machine: bytes,
    artifact: ArtifactPublished,
    dest: Path,
    progress: Progress | None,
) -> Fetched:
    return await transfers.download(
        machine,
        artifact.artifact,
        size=artifact.size,
        digest=artifact.digest,
        dest=dest,
        progress=progress,
    )


def fetched_json(result: Fetched, artifact: ArtifactPublished) -> dict[str, Any]:
    return {
        "artifact": artifact.artifact,
        "name": artifact.name,
        "path": str(result.path),
        "size": result.size,
        "digest": result.digest.hex(),
        "bytes_received": result.bytes_received,
        "resumed_at": list(result.resumed_at),
        "kept_from_before": result.kept,  # bytes an interrupted `get` had already written
        "seconds": result.seconds,
        "mib_per_second": result.size / (1 << 20) / result.seconds if result.seconds else None,
        "shown_size": format_size(result.size),
    }


async def list_artifacts(cache: Cache, names: dict[bytes, str], session: str) -> dict[str, Any]:
    machine = await cache.session_machine(session)
    if machine is None:
        raise FileNotFoundError(session)
    rows = await session_artifacts(cache, session)
    shown = names.get(machine, machine.hex())
    return {"artifacts": [artifact_json(shown, event, artifact) for event, artifact in rows]}
