"""The relay registry's pairing records on both implementations: tickets (create,
open, burn, expire) and grants; every refusal code, and that refusals and failures
write nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from starmux.errors import UsageError
from starmux.relay.registry import RegistryError

from ..registry_backends import Backend
from .cases import (
    ACCOUNT,
    CTRL,
    MACHINE,
    MACHINE_CARD,
    OTHER_ACCOUNT,
    OTHER_CTRL,
    SIG,
    T0,
    TICKET,
    TOKEN,
    TTL,
    AnyRegistry,
    grant,
    refused,
    with_accounts,
    with_open_ticket,
)


# --- tickets --------------------------------------------------------------------------
async def test_create_ticket(reg: AnyRegistry) -> None:
    record = await reg.create_ticket(
        ticket=TICKET, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0, ttl=TTL
    )
    assert record.expires_at == T0 + TTL
    assert (record.failures, record.opened_by, record.consumed_at) == (0, None, None)
    with pytest.raises(UsageError):
        await reg.create_ticket(
            ticket=b"x" * 16, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0, ttl=0
        )


async def test_new_ticket_replaces_the_machines_old_one(reg: AnyRegistry) -> None:
    await with_open_ticket(reg)
    await reg.create_ticket(
        ticket=b"U" * 16, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0 + 5, ttl=TTL
    )
    with pytest.raises(RegistryError) as e:
        await reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 6)
    assert e.value.code == "unknown-ticket"


async def test_stale_tickets_are_dropped_after_retention(backend: Backend) -> None:
    registry = backend.make(ticket_retention=100.0)
    await registry.open()
    try:
        for n, machine in enumerate((b"1", b"2")):
            await registry.create_ticket(
                ticket=machine * 16, machine_key=machine, machine_card=b"c", now=T0 + n, ttl=TTL
            )
        # Expired but within retention: still says "expired", not "unknown".
        await registry.create_ticket(
            ticket=b"3" * 16, machine_key=b"3", machine_card=b"c", now=T0 + TTL + 50, ttl=TTL
        )
        assert len((await backend.snapshot())["tickets"]) == 3
        await registry.create_ticket(
            ticket=b"4" * 16, machine_key=b"4", machine_card=b"c", now=T0 + TTL + 100.5, ttl=TTL
        )
        assert [r[0] for r in (await backend.snapshot())["tickets"]] == [
            b"2" * 16,
            b"3" * 16,
            b"4" * 16,
        ]
    finally:
        await registry.close()


async def test_create_ticket_refusals(reg: AnyRegistry, backend: Backend) -> None:
    await with_open_ticket(reg)
    await refused(
        backend, "exists",
        reg.create_ticket(ticket=TICKET, machine_key=b"new", machine_card=b"c", now=T0, ttl=TTL),
    )  # fmt: skip
    await grant(reg)

    def again(now: float) -> Any:
        return reg.create_ticket(
            ticket=b"V" * 16, machine_key=MACHINE, machine_card=MACHINE_CARD, now=now, ttl=TTL
        )

    await refused(backend, "paired", again(T0 + 10))
    assert await reg.revoke_machine(MACHINE, account=ACCOUNT, by=CTRL, now=T0 + 20)
    await refused(backend, "revoked", again(T0 + 30))


async def test_open_ticket(reg: AnyRegistry, backend: Backend) -> None:
    await with_accounts(reg)
    await reg.create_ticket(
        ticket=TICKET, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0, ttl=TTL
    )
    record = await reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 1)
    assert record.opened_by == CTRL
    assert (await reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 2)).opened_by == CTRL
    await refused(backend, "taken", reg.open_ticket(TICKET, controller_key=OTHER_CTRL, now=T0 + 3))
    await refused(
        backend, "unknown-ticket", reg.open_ticket(b"?" * 16, controller_key=CTRL, now=T0)
    )
    # Expiry is exact: at expires_at the ticket is already gone.
    await refused(backend, "expired", reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + TTL))
    assert (await reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + TTL - 0.001)).opened_by


@pytest.mark.parametrize("same_instance", [True, False])
async def test_first_controller_to_open_wins(backend: Backend, same_instance: bool) -> None:
    one = backend.make()
    await one.open()
    two = one if same_instance else backend.make()
    if not same_instance:
        await two.open()
    try:
        await with_accounts(one)
        await one.create_ticket(
            ticket=TICKET, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0, ttl=TTL
        )
        results = await asyncio.gather(
            *(
                registry.open_ticket(TICKET, controller_key=key, now=T0 + 1)
                for _ in range(5)
                for registry, key in ((one, CTRL), (two, OTHER_CTRL))
            ),
            return_exceptions=True,
        )
        winners = {r.opened_by for r in results if not isinstance(r, BaseException)}
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1
        assert len(losers) == 5
        assert all(isinstance(r, RegistryError) and r.code == "taken" for r in losers)
    finally:
        await one.close()
        await two.close()


async def test_ticket_burns_at_max_failures(reg: AnyRegistry, backend: Backend) -> None:
    await with_open_ticket(reg)
    assert await reg.record_ticket_failure(b"?" * 16, max_failures=3) == 0
    assert await reg.record_ticket_failure(TICKET, max_failures=3) == 1
    assert await reg.record_ticket_failure(TICKET, max_failures=3) == 2
    assert (await reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 2)).failures == 2
    assert await reg.record_ticket_failure(TICKET, max_failures=3) == 3
    await refused(backend, "burnt", reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 2))
    await refused(backend, "burnt", grant(reg))
    # Stays burnt even if the limit is raised later (e.g. a config change).
    assert await reg.record_ticket_failure(TICKET, max_failures=10) == 4
    await refused(backend, "burnt", reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 2))
    with pytest.raises(UsageError):
        await reg.record_ticket_failure(TICKET, max_failures=0)


# --- grants ---------------------------------------------------------------------------
async def test_grant_machine(reg: AnyRegistry, backend: Backend) -> None:
    await with_open_ticket(reg)
    record = await grant(reg)
    assert (record.key, record.account, record.card, record.granted_by) == (
        MACHINE, ACCOUNT, MACHINE_CARD, CTRL,
    )  # fmt: skip
    assert (record.grant_signature, record.grant_issued_at, record.paired_at) == (
        SIG, T0 + 2, T0 + 3,
    )  # fmt: skip
    assert (record.last_seen, record.revoked_at) == (None, None)
    assert await reg.machine(MACHINE) == record
    assert await reg.machines_of(ACCOUNT) == [record]
    entry = (await reg.audit_log())[0]
    assert (entry.event, entry.actor, entry.subject) == ("machine.granted", CTRL, MACHINE)
    assert (await backend.snapshot())["tickets"][0][8] == T0 + 3  # consumed_at
    await refused(backend, "consumed", reg.open_ticket(TICKET, controller_key=CTRL, now=T0 + 4))
    await refused(backend, "consumed", grant(reg, now=T0 + 4))


@pytest.mark.parametrize(
    ("code", "changes"),
    [
        ("unknown-ticket", {"ticket": b"?" * 16}),
        ("expired", {"now": T0 + TTL}),
        ("taken", {"granted_by": OTHER_CTRL, "account": OTHER_ACCOUNT}),
        ("mismatch", {"machine_key": b"X" * 32}),
        ("mismatch", {"machine_card": MACHINE_CARD + b" "}),
        ("mismatch", {"account": OTHER_ACCOUNT}),  # grantor is not in that account
    ],
)
async def test_grant_refusals_write_nothing(
    reg: AnyRegistry, backend: Backend, code: str, changes: dict[str, Any]
) -> None:
    await with_open_ticket(reg)
    await refused(backend, code, grant(reg, **changes))
    await grant(reg)  # the ticket is still good for the right grant


async def test_grant_needs_the_ticket_opened(reg: AnyRegistry, backend: Backend) -> None:
    await with_accounts(reg)
    await reg.create_ticket(
        ticket=TICKET, machine_key=MACHINE, machine_card=MACHINE_CARD, now=T0, ttl=TTL
    )
    await refused(backend, "taken", grant(reg))


async def test_grant_guards_revoked_and_paired_keys(reg: AnyRegistry, backend: Backend) -> None:
    await with_open_ticket(reg)
    # Neither state is reachable through the API (create_ticket refuses both);
    # written behind its back to prove grant_machine still keeps the invariants.
    await backend.raw(
        "INSERT INTO revocations (key, revoked_at, account, revoked_by) VALUES (?, ?, ?, ?)",
        (MACHINE, T0, ACCOUNT, CTRL),
    )
    await refused(backend, "revoked", grant(reg))
    await backend.raw("DELETE FROM revocations")
    await grant(reg)
    await backend.raw(
        "INSERT INTO tickets (ticket, machine_key, machine_card, created_at, expires_at,"
        " opened_by) VALUES (?, ?, ?, ?, ?, ?)",
        (b"W" * 16, MACHINE, MACHINE_CARD, T0, T0 + TTL, CTRL),
    )
    await refused(backend, "paired", grant(reg, ticket=b"W" * 16))


async def test_failure_partway_rolls_back_everything(reg: AnyRegistry, backend: Backend) -> None:
    """The audit row is each operation's last write; make it fail and check that
    the writes before it (ticket consumed, machine row, token, revocation) are gone."""
    await reg.add_registration_token(TOKEN, now=T0)
    await with_open_ticket(reg)
    for sql in backend.abort_audit_sql:
        await backend.raw(sql)
    before = await backend.snapshot()
    with pytest.raises(backend.abort_error, match="disk"):
        await grant(reg)
    with pytest.raises(backend.abort_error, match="disk"):
        await reg.create_account(
            controller_key=b"N" * 32, controller_card=b"n", account=b"n" * 16, token_hash=TOKEN,
            now=T0,
        )  # fmt: skip
    assert await backend.snapshot() == before
    assert await reg.machine(MACHINE) is None

    for sql in backend.drop_abort_sql:
        await backend.raw(sql)
    await grant(reg)  # the ticket was left unconsumed, so this still works
    for sql in backend.abort_audit_sql:
        await backend.raw(sql)
    before = await backend.snapshot()
    with pytest.raises(backend.abort_error, match="disk"):
        await reg.revoke_machine(MACHINE, account=ACCOUNT, by=CTRL, now=T0 + 9)
    assert await backend.snapshot() == before
    assert not await reg.is_revoked(MACHINE)
