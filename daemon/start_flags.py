"""Start flags a daemon remembers in its store, so that a restart without them keeps
what they said instead of silently widening it (``--allow-root``, ``--allow-env``),
and the machine's default name."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path

from .store import DaemonStore


async def allowed_roots(store: DaemonStore, flag: Sequence[Path]) -> list[Path]:
    """``--allow-root`` is remembered like the relay and the name: a restart without
    it keeps the roots it had, instead of silently widening them to the home."""
    if flag:
        await store.set_setting("allow_roots", json.dumps([str(root) for root in flag]))
        return list(flag)
    stored_text = await store.setting("allow_roots")
    if stored_text:
        roots = json.loads(stored_text)
        if isinstance(roots, list) and roots and all(isinstance(r, str) for r in roots):
            return [Path(root) for root in roots]
    return [Path.home()]


async def allowed_env(store: DaemonStore, flag: Sequence[str] | None) -> frozenset[str] | None:
    """``--allow-env`` names, remembered: a restart must not silently widen them."""
    if flag:
        names = sorted(set(flag))
        await store.set_setting("allow_env", json.dumps(names))
        return frozenset(names)
    stored = await store.setting("allow_env")
    return frozenset(json.loads(stored)) if stored is not None else None


def default_name() -> str:
    return (socket.gethostname() or "machine")[:64]
