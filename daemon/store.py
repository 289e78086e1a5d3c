"""The daemon's home: machine key, ``daemon.sqlite3`` (settings, controllers, audit)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from starmux.home import load_or_create_node_keys
from starmux.identity import IdentityCard, NodeKeys
from starmux.node.database import HomeDatabase, read_setting, write_setting

KEY_FILE = "machine.key"
DATABASE_FILE = "daemon.sqlite3"


@dataclass(frozen=True)
class PairedController:
    key: bytes
    card: IdentityCard
    account: bytes
    grant_signature: bytes
    grant_issued_at: float
    paired_at: float


class DaemonStore(HomeDatabase):
    FILE = DATABASE_FILE
    PACKAGE = "starmux.daemon"

    def keys(self) -> tuple[NodeKeys, bool]:
        """The machine's keys, created on first use; ``(keys, created)``."""
        return load_or_create_node_keys(self.home / KEY_FILE)

    def forget_keys(self) -> None:
        """After a revocation the old identity is useless: the relay refuses it forever."""
        with contextlib.suppress(FileNotFoundError):
            (self.home / KEY_FILE).unlink()

    async def setting(self, name: str) -> str | None:
        value = await read_setting(self.db, name)
        return value.decode() if value is not None else None

    async def relay_key(self) -> bytes | None:
        return await read_setting(self.db, "relay_key")

    async def set_setting(self, name: str, value: str | bytes) -> None:
        await write_setting(self.db, name, value.encode() if isinstance(value, str) else value)

    async def add_controller(self, controller: PairedController) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO controllers "
            "(key, card, account, grant_signature, grant_issued_at, paired_at) "
            "VALUES (?,?,?,?,?,?)",
            (
                controller.key,
                controller.card.encode(),
                controller.account,
                controller.grant_signature,
                controller.grant_issued_at,
                controller.paired_at,
            ),
        )

    async def controllers(self) -> list[PairedController]:
        rows = await self.db.execute_fetchall(
            "SELECT key, card, account, grant_signature, grant_issued_at, paired_at "
            "FROM controllers ORDER BY paired_at"
        )
        return [
            PairedController(
                bytes(r[0]), IdentityCard.decode(bytes(r[1])), bytes(r[2]), bytes(r[3]), r[4], r[5]
            )
            for r in rows
        ]

    async def forget_pairing(self) -> None:
        await self.db.execute("DELETE FROM controllers")

    async def audit(self, event: str, *, actor: bytes, detail: str, now: float) -> None:
        await self.db.execute(
            "INSERT INTO audit (at, event, actor, detail) VALUES (?,?,?,?)",
            (now, event, actor, detail),
        )

    async def audit_log(self, limit: int = 100) -> list[tuple[float, str, bytes, str]]:
        rows = await self.db.execute_fetchall(
            "SELECT at, event, actor, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [(r[0], r[1], bytes(r[2]), r[3]) for r in rows]
