"""The machine's part of ``starmux doctor``: whether its daemon runs, and the
relay seen with the machine's identity when it does not."""

from __future__ import annotations

from pathlib import Path

from starmux.errors import StarmuxError
from starmux.identity import Role
from starmux.node.doctor import Check, relay_checks

from .process import read_status
from .store import DaemonStore


async def role_checks(home: Path) -> list[Check]:
    checks: list[Check] = []

    status = read_status(home)
    running = status is not None and status.alive
    checks.append(
        Check(
            "daemon",
            running,
            f"running (pid {status.pid}, {status.state})" if running and status else "not running",
            ""
            if running
            else "start it: starmux daemon start (or --detach, "
            "or `starmux daemon install` for systemd)",
        )
    )
    daemon_store = DaemonStore(home)
    await daemon_store.open()
    try:
        url = await daemon_store.setting("relay_url")
        pinned = await daemon_store.relay_key()
        name = await daemon_store.setting("name") or "machine"
    finally:
        await daemon_store.close()
    # Connecting with the machine's key while its daemon runs would replace the
    # daemon's own connection (close 4013); a running daemon is checked by its status.
    if url and not running:
        try:
            machine_keys, _ = daemon_store.keys()
        except StarmuxError as exc:
            checks.append(Check("machine keys", False, exc.message, exc.hint or ""))
            return checks
        checks += [
            Check(f"machine: {c.name}", c.ok, c.detail, c.hint)
            for c in await relay_checks(url, machine_keys, Role.MACHINE, name, pinned)
        ]
    return checks
