"""The controller's outbox as a person sees it: the commands still waiting for their
machine or refused by it (``starmux outbox``), and the refusals not yet said.

Functions over the agent's :class:`~starmux.client.sessions.ControllerState`.
Invariant: every refusal of a queued command is shown once without asking (the
next command after it says so), then only by ``starmux outbox``.
"""

from __future__ import annotations

from typing import Any

from starmux.messages import CancelSession, DecideCheckpoint, StartSession
from starmux.node.database import read_setting, write_setting

from .sessions import ControllerState

_REPORTED_SETTING = "outbox_failures_reported_until"
#: How the outbox names a command kind to a person (the command that queued it).
_COMMAND_NAMES = {
    StartSession.KIND: "run",
    CancelSession.KIND: "cancel",
    DecideCheckpoint.KIND: "decision",
}


async def outbox(state: ControllerState) -> dict[str, Any]:
    names = await state.machine_names()
    rows = await state.store.db.execute_fetchall(
        "SELECT command_id, machine, kind, created_at, acked_at, ok, error, hint "
        "FROM outbox WHERE acked_at IS NULL OR ok = 0 ORDER BY created_at"
    )
    return {
        "commands": [
            {
                "command_id": r[0],
                "machine": names.get(bytes(r[1]), "(revoked)"),
                "kind": _COMMAND_NAMES.get(r[2], r[2]),
                "created_at": r[3],
                "state": "pending" if r[4] is None else "refused",
                "answered_at": r[4],
                "error": r[6] or "",
                "hint": r[7] or "",
            }
            for r in rows
        ]
    }


async def unreported_failures(state: ControllerState) -> list[dict[str, Any]]:
    """Queued commands refused since the last time a command said so (then marked
    as said): every refusal is shown once without asking."""
    value = await read_setting(state.store.db, _REPORTED_SETTING)
    until = float(value.decode()) if value else 0.0
    rows = list(
        await state.store.db.execute_fetchall(
            "SELECT command_id, machine, kind, acked_at, error, hint FROM outbox "
            "WHERE ok = 0 AND acked_at > ? ORDER BY acked_at",
            (until,),
        )
    )
    if not rows:
        return []
    await write_setting(state.store.db, _REPORTED_SETTING, repr(rows[-1][3]).encode())
    names = await state.machine_names()
    return [
        {
            "command_id": r[0],
            "machine": names.get(bytes(r[1]), "(revoked)"),
            "kind": _COMMAND_NAMES.get(r[2], r[2]),
            "error": r[4] or "",
            "hint": r[5] or "",
        }
        for r in rows
    ]
