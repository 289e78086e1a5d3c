"""What the registry tests share: the records they write and the steps they take."""

from __future__ import annotations

import os
import pathlib
import stat
from typing import Any

import pytest

from starmux.relay.pg_registry import PostgresRegistry
from starmux.relay.registry import RegistryError
from starmux.relay.sqlite_registry import SqliteRegistry

from ..registry_backends import Backend

T0 = 1_700_000_000.0
TTL = 300.0
ACCOUNT = bytes(range(16))
OTHER_ACCOUNT = bytes(range(1, 17))
CTRL = b"C" * 32
CTRL_CARD = b"controller-card"
OTHER_CTRL = b"D" * 32  # a controller of OTHER_ACCOUNT
MACHINE = b"M" * 32
MACHINE_CARD = b"machine-card"
TICKET = b"T" * 16
SIG = b"S" * 64
TOKEN = b"H" * 32

AnyRegistry = SqliteRegistry | PostgresRegistry


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def with_accounts(reg: AnyRegistry) -> None:
    await reg.create_account(
        controller_key=CTRL, controller_card=CTRL_CARD, account=ACCOUNT, token_hash=None, now=T0
    )
    await reg.create_account(
        controller_key=OTHER_CTRL, controller_card=b"d", account=OTHER_ACCOUNT, token_hash=None,
        now=T0,
    )  # fmt: skip


async def with_open_ticket(reg: AnyRegistry) -> None:
    await with_accounts(reg)
    await reg.create_ticket(
        ticket=TICKET, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0, ttl=TTL
    )
    await reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 1)


async def grant(reg: AnyRegistry, **changes: Any) -> Any:
    args: dict[str, Any] = {
        "ticket": TICKET, "account": ACCOUNT, "granted_by": CTRL, "machine_card": MACHINE_CARD,
        "machine_key": MACHINE, "grant_signature": SIG, "grant_issued_at": T0 + 2, "now": T0 + 3,
    }  # fmt: skip
    args.update(changes)
    return await reg.grant_machine(**args)


async def refused(backend: Backend, code: str, action: Any) -> None:
    """``action`` raises RegistryError(code) and leaves every table as it was."""
    before = await backend.snapshot()
    with pytest.raises(RegistryError) as e:
        await action
    assert e.value.code == code
    assert await backend.snapshot() == before
