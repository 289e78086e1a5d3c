"""The controller's home: its identity key and its SQLite cache (``controller.sqlite3``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from starmux.errors import UsageError
from starmux.home import load_node_keys, load_or_create_node_keys
from starmux.identity import IdentityCard, NodeKeys
from starmux.node.database import HomeDatabase, read_setting, write_setting

KEY_FILE = "controller.key"
DATABASE_FILE = "controller.sqlite3"


class NotInitialized(UsageError):
    def __init__(self, home: Path) -> None:
        super().__init__(
            f"no controller in {home}",
            hint="run `starmux init --relay ws://RELAY:8765 --token TOKEN` first "
            "(or set STARMUX_HOME to the right folder)",
        )


@dataclass(frozen=True)
class KnownMachine:
    key: bytes
    name: str
    fingerprint: str
    card: bytes
    paired_at: float
    last_seen: float | None


@dataclass(frozen=True)
class ControllerConfig:
    relay_url: str
    relay_key: bytes
    account: bytes
    name: str


class ControllerStore(HomeDatabase):
    FILE = DATABASE_FILE
    PACKAGE = "starmux.client"

    async def __aenter__(self) -> ControllerStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def keys(self, *, create: bool = False) -> NodeKeys:
        path = self.home / KEY_FILE
        if create:
            return load_or_create_node_keys(path)[0]
        if not path.exists():
            raise NotInitialized(self.home)
        return load_node_keys(path)

    async def config(self) -> ControllerConfig:
        values = {
            n: await read_setting(self.db, n) for n in ("relay_url", "relay_key", "account", "name")
        }
        if any(value is None for value in values.values()):
            raise NotInitialized(self.home)
        return ControllerConfig(
            relay_url=(values["relay_url"] or b"").decode(),
            relay_key=values["relay_key"] or b"",
            account=values["account"] or b"",
            name=(values["name"] or b"").decode(),
        )

    async def save_config(self, config: ControllerConfig) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        await write_setting(self.db, "relay_url", config.relay_url.encode())
        await write_setting(self.db, "relay_key", config.relay_key)
        await write_setting(self.db, "account", config.account)
        await write_setting(self.db, "name", config.name.encode())
        await self.db.execute("COMMIT")

    async def add_machine(
        self, card: IdentityCard, *, paired_at: float | None = None, name: str | None = None
    ) -> None:
        """Pin ``card``: only for a card this controller verified while pairing. The
        table is the controller's pins (see :mod:`starmux.client.roster`); nothing the
        relay says is ever written here. ``name``: the real name the machine sent inside
        the pairing, when its card (which the relay sees) carries a generic one."""
        await self.db.execute(
            "INSERT INTO machines (key, name, fingerprint, card, paired_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT (key) DO UPDATE SET name = excluded.name, card = excluded.card",
            (
                card.sign_public,
                name or card.name,
                card.fingerprint,
                card.encode(),
                paired_at if paired_at is not None else time.time(),
            ),
        )

    async def machines(self) -> list[KnownMachine]:
        rows = await self.db.execute_fetchall(
            "SELECT key, name, fingerprint, card, paired_at, last_seen FROM machines "
            "ORDER BY paired_at"
        )
        return [KnownMachine(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    async def remove_machine(self, key: bytes) -> None:
        await self.db.execute("DELETE FROM machines WHERE key = ?", (key,))

    async def find_machine(self, query: str) -> KnownMachine:
        """By exact name, or by fingerprint (or a unique prefix of at least 4 characters)."""
        machines = await self.machines()
        by_name = [m for m in machines if m.name == query]
        if len(by_name) == 1:
            return by_name[0]
        compact = query.upper().replace("-", "").replace(" ", "")
        by_fp = [
            m
            for m in machines
            if len(compact) >= 4 and m.fingerprint.replace("-", "").startswith(compact)
        ]
        if len(by_fp) == 1:
            return by_fp[0]
        if by_name or len(by_fp) > 1:
            raise UsageError(
                f"{query!r} matches several machines",
                hint="use more of the fingerprint (see `starmux machines`)",
            )
        raise UsageError(
            f"no paired machine called {query!r}",
            hint="see `starmux machines` for names and fingerprints",
        )
