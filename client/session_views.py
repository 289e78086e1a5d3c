"""How the controller's cached sessions, checkpoints and events read as data: the
JSON every listing answers with, and the output or status an event carries.

Pure functions over cache rows (no I/O): the agent's operations and the review
commands render with them, the CLI escapes what they return before printing.
"""

from __future__ import annotations

from typing import Any

from starmux.errors import StarmuxError
from starmux.messages import APP, LoggedEvent, Output, SessionStatusChanged
from starmux.session_state import TERMINAL

from .cache import CheckpointRow, SessionRow

#: Status the controller gives the unfinished sessions of a machine it revoked.
REVOKED = "revoked"
ENDED = frozenset({*TERMINAL, REVOKED})


def output_of(event: LoggedEvent) -> tuple[str, bytes] | None:
    try:
        message = APP.decode(event.body)
    except StarmuxError:
        return None
    if isinstance(message, Output):
        return message.stream, message.data
    return None


def status_of(event: LoggedEvent) -> SessionStatusChanged | None:
    try:
        message = APP.decode(event.body)
    except StarmuxError:
        return None
    return message if isinstance(message, SessionStatusChanged) else None


def session_json(row: SessionRow, names: dict[bytes, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "machine": names.get(row.machine, row.machine.hex()),
        "title": row.title,
        "cwd": row.cwd,
        "argv": row.argv,
        "status": row.status,
        "exit_code": row.exit_code,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "cost": {
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "usd": row.usd,
        },
    }


def checkpoint_json(row: CheckpointRow, names: dict[bytes, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "machine": names.get(row.machine, row.machine.hex()),
        "session": row.session,
        "title": row.title,
        "body": row.body,
        "expires_at": row.expires_at,
        "default": "approve" if row.default_approve else "deny",
        "preview": row.preview_json(),
    }
