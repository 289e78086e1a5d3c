"""The controller's part of ``starmux doctor``: its keys, the relay seen with the
controller's identity, and the outbox."""

from __future__ import annotations

from pathlib import Path

from starmux.errors import StarmuxError
from starmux.identity import Role
from starmux.node.doctor import Check, relay_checks

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
            checks += await relay_checks(
                config.relay_url, keys, Role.CONTROLLER, config.name, config.relay_key
            )
            waiting = await Cache(store.db).pending()
            checks.append(
                Check(
                    "outbox",
                    True,
                    f"{len(waiting)} command(s) waiting for their machine" if waiting else "empty",
                )
            )
    return checks
