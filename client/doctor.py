"""The controller's part of ``starmux doctor``: its keys, the relay seen with the
controller's identity, and the outbox."""

from __future__ import annotations

from pathlib import Path

from starmux.errors import StarmuxError
from starmux.identity import Role
from starmux.node.doctor import Check, relay_checks

from .agent_client import relay_link_released_async
from .cache import Cache
from .store import ControllerStore


async def role_checks(home: Path) -> list[Check]:
    checks: list[Check] = []
    async with ControllerStore(home) as store:
        try:
            config = await store.config()
            keys = store.keys()  # refuses a key file others can read
        except StarmuxError as exc:
            checks.append(Check("controller", False, exc.message, exc.hint or ""))
        else:
            # The check connects with the device's key: a running agent stays off
            # the relay meanwhile rather than being replaced (and staying off).
            async with relay_link_released_async(home):
                checks += await relay_checks(
                    config.relay_url, keys, Role.CONTROLLER, config.name, config.relay_key
                )
            waiting = await Cache(store.db).pending()
            checks.append(await _notifications(store, keys.sign_public))
            checks.append(
                Check(
                    "outbox",
                    True,
                    f"{len(waiting)} command(s) waiting for their machine" if waiting else "empty",
                )
            )
    return checks


async def _notifications(store: ControllerStore, me: bytes) -> Check:
    """Webhooks and push targets failing on some machine (from the cache)."""
    from .agent_cli import printable
    from .notify_actions import target_rows

    rows = await target_rows(store, Cache(store.db), me)
    failing = [
        f"{printable(t['id'])} on {printable(m['machine'])}: {printable(m.get('detail', ''))}"
        for t in rows
        for m in t["machines"]
        if m.get("state") == "failing"
    ]
    if failing:
        return Check(
            "notifications",
            False,
            "failing: " + "; ".join(failing),
            "check the endpoint, then `starmux notify test`; see `starmux notify list`",
        )
    return Check("notifications", True, f"{len(rows)} target(s), none failing")
