"""Paired machines as the controller agent manages them: the listing (the pinned
machines with what the relay says of them now), renaming, and revocation.

Functions over the agent's :class:`~starmux.client.sessions.ControllerState`.
Invariants:
- The relay's word never adds or removes a paired machine here (see :mod:`.roster`).
- A revoked machine's unfinished sessions end as ``revoked`` here (the machine can
  no longer report their end), its queued commands are dropped, and its pending
  checkpoints leave ``approvals`` (they belong to an ended session).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from starmux.control import ListMachines, MachineList, MachineRevoked, RevokeMachine
from starmux.errors import StarmuxError
from starmux.node.link import RelayRefused
from starmux.relay_auth import revoke_transcript

from .roster import reconcile
from .session_views import ENDED, REVOKED
from .sessions import ControllerState, OperationFailed


async def machines(state: ControllerState) -> dict[str, Any]:
    """Paired machines (pinned at pairing), with what the relay says about them now.
    The relay's word never adds or removes one here (see :mod:`.roster`): a machine
    it does not list is shown as such, what it gets wrong comes back as warnings."""
    known = await state.store.machines()
    listing: MachineList | None = None
    controller = state.controller
    if controller is not None and controller.link is not None:
        with contextlib.suppress(StarmuxError):
            reply = await controller.link.request(ListMachines(0), MachineList)
            assert isinstance(reply, MachineList)
            listing = reply
    roster = reconcile(known, listing) if listing is not None else None
    entries = {e.machine.key: e for e in roster.entries} if roster else {}
    views = []
    for machine in known:
        entry = entries.get(machine.key)
        info = entry.listing if entry is not None else None
        if info is not None:
            state.last_seen[machine.key] = info.last_seen
        channel = controller.machines.get(machine.key) if controller else None
        views.append(
            {
                "name": machine.name,  # this controller's name for it (see rename)
                "fingerprint": machine.fingerprint,
                "key": machine.key.hex(),
                # The relay's list when it answered (presence is all it is), else
                # what the live channels know.
                "online": info.online
                if info is not None
                else (roster is None and bool(channel and channel.online)),
                "listed_by_relay": (info is not None) if roster is not None else None,
                "paired_at": machine.paired_at,
                "last_seen": state.last_seen.get(machine.key, machine.last_seen),
            }
        )
    return {
        "machines": views,
        "warnings": roster.warnings if roster is not None else [],
        "relay": await state.relay(),
    }


async def revoke(state: ControllerState, query: str) -> dict[str, Any]:
    machine = await state.store.find_machine(query)
    controller = state.controller
    if controller is None or controller.link is None:
        raise OperationFailed(
            "unavailable",
            f"the relay is unreachable ({state.relay_error})",
            "revocation goes through the relay; try again when it answers",
        )
    issued_at = time.time()
    signature = state.keys.sign(revoke_transcript(state.config.account, machine.key, issued_at))
    try:
        await controller.link.request(
            RevokeMachine(0, machine.key, issued_at, signature), MachineRevoked
        )
    except RelayRefused as exc:
        if exc.code != "unknown-machine":
            raise
    await forget_revoked(state, machine.key)
    return {"revoked": machine.name, "fingerprint": machine.fingerprint}


async def rename(state: ControllerState, query: str, name: str) -> dict[str, Any]:
    """Rename a machine here (the name is this controller's label for it; the
    machine's card keeps the name it chose)."""
    machine = await state.store.find_machine(query)
    if not name.isprintable() or name != name.strip():
        raise OperationFailed("bad-request", f"{name!r} is not a usable machine name")
    if any(m.name == name and m.key != machine.key for m in await state.store.machines()):
        raise OperationFailed("refused", f"another machine is already called {name!r}")
    await state.store.db.execute("UPDATE machines SET name = ? WHERE key = ?", (name, machine.key))
    return {"renamed": machine.name, "name": name, "fingerprint": machine.fingerprint}


async def forget_revoked(state: ControllerState, key: bytes) -> None:
    """End what a revoked machine can no longer report, and stop talking to it."""
    ended = [r.id for r in await state.cache.sessions(key) if r.status not in ENDED]
    await state.store.db.execute(
        "UPDATE sessions SET status = ?, updated_at = ? WHERE machine = ? AND status "
        f"NOT IN ({','.join('?' * len(ENDED))})",
        (REVOKED, time.time(), key, *sorted(ENDED)),
    )
    await state.store.db.execute(
        "DELETE FROM outbox WHERE machine = ? AND acked_at IS NULL", (key,)
    )
    await state.store.remove_machine(key)
    if state.controller is not None:
        state.controller.machines.pop(key, None)
    for session in ended:
        for wake in state.watchers.get(session, ()):
            wake.set()
