"""The relay registry against real SQLite files and a real PostgreSQL server: its
file and schema, accounts, machines, the audit log and device logs; every refusal
code, and that refusals and failures write nothing (tickets and grants:
``test_pairing.py``).

Every test that takes ``backend`` runs once per implementation (the same suite
proves the same semantics); the file-level tests at the top are SQLite's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
from typing import Any

import aiosqlite
import pytest

from starmux.errors import UsageError
from starmux.node.database import SchemaError, load_migrations
from starmux.relay.pg_registry import PostgresRegistry
from starmux.relay.registry import (
    ControllerRecord,
    DeviceChange,
    DeviceLogRow,
    PushSubscription,
    Registry,
)
from starmux.relay.sqlite_registry import SqliteRegistry

from ..registry_backends import Backend
from .cases import (
    ACCOUNT,
    CTRL,
    CTRL_CARD,
    MACHINE,
    OTHER_ACCOUNT,
    OTHER_CTRL,
    T0,
    TOKEN,
    TTL,
    AnyRegistry,
    grant,
    mode_of,
    refused,
    with_accounts,
    with_open_ticket,
)


# --- file, connection, schema ---------------------------------------------------------
def test_satisfies_the_protocol(path: pathlib.Path) -> None:
    registries: list[Registry] = [SqliteRegistry(path), PostgresRegistry("postgresql://x/y")]
    assert registries  # checked by mypy


async def test_file_and_wal_are_private(sqlite_reg: SqliteRegistry, path: pathlib.Path) -> None:
    old_umask = os.umask(0o022)  # a typical, permissive umask must not matter
    try:
        await with_open_ticket(sqlite_reg)
    finally:
        os.umask(old_umask)
    for name in (path, pathlib.Path(f"{path}-wal"), pathlib.Path(f"{path}-shm")):
        assert mode_of(name) == 0o600, name
    async with aiosqlite.connect(path) as db:
        rows = list(await db.execute_fetchall("PRAGMA journal_mode"))
    assert rows[0][0] == "wal"


async def test_open_tightens_an_existing_file(path: pathlib.Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    os.chmod(path, 0o644)  # whatever the umask made of it
    registry = SqliteRegistry(path)
    await registry.open()
    await registry.close()
    assert mode_of(path) == 0o600


async def test_keys_are_stored_as_blobs(sqlite_reg: SqliteRegistry, path: pathlib.Path) -> None:
    await with_open_ticket(sqlite_reg)
    await grant(sqlite_reg)
    async with aiosqlite.connect(path) as db:
        rows = list(await db.execute_fetchall("SELECT typeof(key), typeof(account) FROM machines"))
    assert [tuple(r) for r in rows] == [("blob", "blob")]


async def test_open_close_misuse(backend: Backend) -> None:
    registry = backend.make()
    with pytest.raises(UsageError, match="not open"):
        await registry.has_accounts()
    await registry.open()
    with pytest.raises(UsageError, match="already open"):
        await registry.open()
    await registry.close()
    await registry.close()  # idempotent
    with pytest.raises(UsageError, match="not open"):
        await registry.machine(MACHINE)


async def test_reopen_finds_everything(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    await first.add_registration_token(TOKEN, now=T0)
    await with_open_ticket(first)
    machine = await grant(first)
    await first.touch(MACHINE, now=T0 + 10)
    await first.audit("relay.started", actor=b"", subject=b"", detail="x", now=T0 + 11)
    before = await backend.snapshot()
    await first.close()

    second = backend.make()
    await second.open()
    try:
        assert await backend.snapshot() == before
        assert await second.has_accounts()
        assert await second.machine(MACHINE) == dataclasses.replace(machine, last_seen=T0 + 10)
        assert [c.key for c in await second.controllers_of(ACCOUNT)] == [CTRL]
        assert (await second.audit_log(limit=1))[0].event == "relay.started"
    finally:
        await second.close()


async def test_refuses_a_newer_schema(backend: Backend) -> None:
    registry = backend.make()
    await registry.open()
    await registry.close()
    await backend.raw("UPDATE schema_version SET version = 999")
    with pytest.raises(SchemaError, match="999 is newer"):
        await registry.open()
    with pytest.raises(UsageError, match="not open"):
        await registry.has_accounts()


async def test_nodes_starting_at_once_migrate_once(backend: Backend) -> None:
    """Several processes (cluster nodes) open one empty registry at the same moment:
    the schema is created once, and every one of them can use it."""
    registries = [backend.make() for _ in range(4)]
    await asyncio.gather(*(r.open() for r in registries))
    try:
        folder = "pg_migrations" if backend.name == "postgresql" else "migrations"
        newest = load_migrations("starmux.relay", folder)[-1].version
        assert (await backend.snapshot())["schema_version"][0][-1] == newest
        await with_accounts(registries[0])
        assert [await r.has_accounts() for r in registries] == [True] * 4
    finally:
        for registry in registries:
            await registry.close()


async def test_only_one_first_registration_token(backend: Backend) -> None:
    registries = [backend.make() for _ in range(3)]
    for registry in registries:
        await registry.open()
    try:
        firsts = await asyncio.gather(
            *(r.add_first_registration_token(bytes([n]) * 32, now=T0) for n, r in
              enumerate(registries))
        )  # fmt: skip
        assert sorted(firsts) == [False, False, True]
        # Still unused: a node started later shows none either.
        assert not await registries[0].add_first_registration_token(TOKEN, now=T0 + 1)
        winner = bytes([firsts.index(True)]) * 32
        await registries[1].create_account(
            controller_key=CTRL, controller_card=CTRL_CARD, account=ACCOUNT, token_hash=winner,
            now=T0 + 2,
        )  # fmt: skip
        # Once an account exists, never again.
        assert not await registries[2].add_first_registration_token(TOKEN, now=T0 + 3)
        assert len((await backend.snapshot())["registration_tokens"]) == 1
    finally:
        for registry in registries:
            await registry.close()


# --- registration ---------------------------------------------------------------------
async def test_open_registration(reg: AnyRegistry) -> None:
    assert not await reg.has_accounts()
    record = await reg.create_account(
        controller_key=CTRL, controller_card=CTRL_CARD, account=ACCOUNT, token_hash=None, now=T0
    )
    assert (record.key, record.account, record.card, record.created_at) == (
        CTRL, ACCOUNT, CTRL_CARD, T0,
    )  # fmt: skip
    assert await reg.has_accounts()
    assert await reg.controller(CTRL) == record
    entry = (await reg.audit_log())[0]
    assert (entry.event, entry.actor, entry.subject, entry.at) == (
        "account.created", CTRL, ACCOUNT, T0,
    )  # fmt: skip


async def test_registration_token_is_consumed_once(reg: AnyRegistry, backend: Backend) -> None:
    await reg.add_registration_token(TOKEN, now=T0)
    await refused(backend, "exists", reg.add_registration_token(TOKEN, now=T0 + 1))
    await reg.create_account(
        controller_key=CTRL, controller_card=CTRL_CARD, account=ACCOUNT, token_hash=TOKEN,
        now=T0 + 2,
    )  # fmt: skip
    rows = (await backend.snapshot())["registration_tokens"]
    assert rows == [(TOKEN, T0, T0 + 2, CTRL)]
    await refused(
        backend, "bad-token",
        reg.create_account(
            controller_key=OTHER_CTRL, controller_card=b"d", account=OTHER_ACCOUNT,
            token_hash=TOKEN, now=T0 + 3,
        ),
    )  # fmt: skip


async def test_create_account_refusals(reg: AnyRegistry, backend: Backend) -> None:
    await with_accounts(reg)
    await reg.add_registration_token(TOKEN, now=T0)

    def create(key: bytes, account: bytes, token: bytes | None) -> Any:
        return reg.create_account(
            controller_key=key, controller_card=b"x", account=account, token_hash=token, now=T0
        )

    await refused(backend, "bad-token", create(b"N" * 32, b"n" * 16, b"unknown"))
    # The token is checked first: without one, nobody learns which keys exist.
    await refused(backend, "bad-token", create(CTRL, b"n" * 16, b"unknown"))
    # A valid token is not spent on a refused registration.
    await refused(backend, "exists", create(CTRL, b"n" * 16, TOKEN))
    await refused(backend, "exists", create(b"N" * 32, ACCOUNT, TOKEN))
    await refused(backend, "exists", create(CTRL, b"n" * 16, None))


async def test_controllers(reg: AnyRegistry) -> None:
    assert await reg.controller(CTRL) is None
    assert await reg.controllers_of(ACCOUNT) == []
    await with_accounts(reg)
    assert [c.key for c in await reg.controllers_of(ACCOUNT)] == [CTRL]
    assert [c.key for c in await reg.controllers_of(OTHER_ACCOUNT)] == [OTHER_CTRL]
    other = await reg.controller(OTHER_CTRL)
    assert other is not None
    assert other.account == OTHER_ACCOUNT


PROOF = b"signed machine-revocation"


# --- machines -------------------------------------------------------------------------
async def test_revocation(reg: AnyRegistry, backend: Backend) -> None:
    assert await reg.machine(MACHINE) is None
    assert not await reg.is_revoked(MACHINE)
    await with_open_ticket(reg)
    await grant(reg)
    before = await backend.snapshot()
    assert not await reg.revoke_machine(MACHINE, account=OTHER_ACCOUNT, by=OTHER_CTRL, now=T0)
    assert not await reg.revoke_machine(b"?" * 32, account=ACCOUNT, by=CTRL, now=T0)
    assert await backend.snapshot() == before

    assert await reg.revoke_machine(MACHINE, account=ACCOUNT, by=CTRL, now=T0 + 10, proof=PROOF)
    assert await reg.is_revoked(MACHINE)
    # The signed revocation is kept: any relay node that cuts the machine off forwards it.
    assert await reg.revocation_proofs([MACHINE, b"?" * 32]) == {MACHINE: PROOF}
    assert await reg.revocation_proofs([]) == {}
    record = await reg.machine(MACHINE)
    assert record is not None
    assert record.revoked_at == T0 + 10
    assert await reg.machines_of(ACCOUNT) == []
    entry = (await reg.audit_log())[0]
    assert (entry.event, entry.actor, entry.subject) == ("machine.revoked", CTRL, MACHINE)

    # Again: still True, first time kept, nothing new written.
    before = await backend.snapshot()
    assert await reg.revoke_machine(MACHINE, account=ACCOUNT, by=CTRL, now=T0 + 20, proof=b"x")
    assert await backend.snapshot() == before
    assert await reg.revocation_proofs([MACHINE]) == {MACHINE: PROOF}

    # Permanent even if the machine row goes away.
    await backend.raw("DELETE FROM machines")
    assert await reg.is_revoked(MACHINE)


async def test_machines_of_lists_live_machines_oldest_first(reg: AnyRegistry) -> None:
    await with_accounts(reg)
    for n, key in enumerate((b"3", b"1", b"2")):
        ticket = key * 16
        await reg.create_ticket(ticket=ticket, machine_key=key, machine_card=b"c", now=T0, ttl=TTL)
        await reg.open_ticket(ticket, controller_key=CTRL, now=T0)
        await grant(reg, ticket=ticket, machine_key=key, machine_card=b"c", now=T0 + n)
    assert [m.key for m in await reg.machines_of(ACCOUNT)] == [b"3", b"1", b"2"]
    assert await reg.machines_of(OTHER_ACCOUNT) == []
    await reg.revoke_machine(b"1", account=ACCOUNT, by=CTRL, now=T0 + 5)
    assert [m.key for m in await reg.machines_of(ACCOUNT)] == [b"3", b"2"]
    assert await reg.revocation_proofs([b"1"]) == {b"1": b""}  # revoked without a proof


async def test_touch_machine(reg: AnyRegistry) -> None:
    await reg.touch(MACHINE, now=T0)  # unknown: nothing happens
    await with_open_ticket(reg)
    await grant(reg)
    await reg.touch(MACHINE, now=T0 + 50)
    await reg.touch(MACHINE, now=T0 + 40)  # late arrival does not go backwards
    record = await reg.machine(MACHINE)
    assert record is not None
    assert record.last_seen == T0 + 50


async def test_touch_a_device_records_when_it_was_last_seen(reg: AnyRegistry) -> None:
    await with_accounts(reg)
    assert [c.last_seen for c in await reg.controllers_of(ACCOUNT)] == [None]
    await reg.touch(CTRL, now=T0 + 30)
    await reg.touch(CTRL, now=T0 + 20)  # late arrival does not go backwards
    record = await reg.controller(CTRL)
    assert record is not None and record.last_seen == T0 + 30
    assert [c.last_seen for c in await reg.controllers_of(ACCOUNT)] == [T0 + 30]


# --- audit ----------------------------------------------------------------------------
async def test_audit_log_newest_first(reg: AnyRegistry) -> None:
    assert await reg.audit_log() == []
    for n in range(5):
        await reg.audit(f"e{n}", actor=b"a", subject=b"s", detail=str(n), now=T0 - n)
    entries = await reg.audit_log(limit=3)
    assert [e.event for e in entries] == ["e4", "e3", "e2"]
    assert (entries[0].at, entries[0].actor, entries[0].subject, entries[0].detail) == (
        T0 - 4, b"a", b"s", "4",
    )  # fmt: skip
    assert len(await reg.audit_log()) == 5
    assert await reg.audit_log(limit=0) == []
    with pytest.raises(UsageError):
        await reg.audit_log(limit=-1)


# --- device logs ----------------------------------------------------------------------
async def test_device_log_append_remove_and_moved(reg: AnyRegistry, backend: Backend) -> None:
    await with_accounts(reg)
    new_device = ControllerRecord(b"N" * 32, ACCOUNT, b"new-card", T0 + 1)
    first = [DeviceLogRow(0, b"h0", b"e0", CTRL, T0), DeviceLogRow(1, b"h1", b"e1", CTRL, T0)]
    await reg.append_device_log(
        ACCOUNT, after_seq=-1, rows=first, change=DeviceChange((new_device,), ()), by=CTRL,
        now=T0 + 1,
    )  # fmt: skip
    assert await reg.device_log(ACCOUNT) == first
    assert [c.key for c in await reg.controllers_of(ACCOUNT)] == [CTRL, new_device.key]
    # Another append that still thinks the log ends at 0 is refused, changing nothing.
    stale = reg.append_device_log(
        ACCOUNT, after_seq=0, rows=[DeviceLogRow(1, b"x", b"x", CTRL, T0)],
        change=DeviceChange((), ()), by=CTRL, now=T0 + 2,
    )  # fmt: skip
    await refused(backend, "log-moved", stale)
    removal = [DeviceLogRow(2, b"h2", b"e2", CTRL, T0 + 3)]
    await reg.append_device_log(
        ACCOUNT, after_seq=1, rows=removal, change=DeviceChange((), (new_device.key,)), by=CTRL,
        now=T0 + 3,
    )  # fmt: skip
    assert await reg.is_removed_device(new_device.key)
    assert not await reg.is_removed_device(CTRL)
    assert await reg.controller(new_device.key) is None
    assert [c.key for c in await reg.controllers_of(ACCOUNT)] == [CTRL]
    assert (await reg.audit_log(limit=1))[0].event == "device-log.appended"


async def test_push_subscriptions_one_per_device_per_account(reg: AnyRegistry) -> None:
    device, account = b"d" * 32, b"a" * 16
    first = PushSubscription(
        device, account, "https://push.example/1", b"\x04" * 65, b"k" * 16, 1.0
    )
    await reg.set_push_subscription(first)
    assert await reg.push_subscription(device, account) == first
    assert await reg.push_subscription(device, b"b" * 16) is None  # only in its account
    newer = dataclasses.replace(first, endpoint="https://push.example/2", registered_at=2.0)
    await reg.set_push_subscription(newer)
    # A late 410 for the old endpoint leaves the newer subscription alone.
    await reg.forget_push_subscription(device, endpoint=first.endpoint)
    assert await reg.push_subscription(device, account) == newer
    await reg.forget_push_subscription(device, endpoint=newer.endpoint)
    assert await reg.push_subscription(device, account) is None
    await reg.set_push_subscription(first)
    await reg.forget_push_subscription(device)
    assert await reg.push_subscription(device, account) is None
