"""The daemon's device gate over a real store: its log copy, refusals, roles, and two
devices deciding one checkpoint at once (the machine harness of test_checkpoints)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from starmux.daemon.checkpoints import TooLate
from starmux.daemon.devices import DeviceGate, RoleRefused
from starmux.daemon.store import PairedController
from starmux.device_log import DeviceLog, Op, encode_entries, sign_entry
from starmux.device_roles import COMMAND_ACTIONS, Action, DeviceRole
from starmux.identity import IdentityCard, NodeKeys, Role

from .deterministic import counter_rng
from .test_checkpoints import WAIT, Machine
from .test_checkpoints import machine as machine  # the fixture

ACCOUNT = bytes(range(16))
NOW = 1_700_000_000.0


def device(name: str) -> tuple[NodeKeys, IdentityCard]:
    keys = NodeKeys.generate(counter_rng(name.encode()))
    return keys, keys.card(Role.CONTROLLER, name)


PHONE, TABLET = device("phone"), device("tablet")


async def gate_for(machine: Machine) -> tuple[DeviceGate, DeviceLog]:
    """A gate whose machine was paired by ``machine.controller`` (the owner), and the
    account's log: owner, phone (viewer), tablet (operator)."""
    owner = machine.controller
    owner_card = owner.card(Role.CONTROLLER, "laptop")
    await machine.store.forget_pairing()
    await machine.store.add_controller(
        PairedController(owner.sign_public, owner_card, ACCOUNT, b"", 0, 0)
    )
    log = DeviceLog.genesis(owner, owner_card, ACCOUNT, at=NOW)
    for (keys, card), role in ((PHONE, DeviceRole.VIEWER), (TABLET, DeviceRole.OPERATOR)):
        log, _ = log.append(owner, Op.ADD, keys.sign_public, card=card, role=role, at=NOW)
    gate = DeviceGate(machine.store)
    machine.checkpoints.is_device = gate.is_current
    return gate, log


async def audited(machine: Machine, event: str) -> list[str]:
    return [d for _, e, _, d in await machine.store.audit_log() if e == event]


async def test_before_any_log_only_the_pairing_controllers_count_as_owners(
    machine: Machine,
) -> None:
    gate, log = await gate_for(machine)
    assert await gate.role_of(machine.controller.sign_public) is DeviceRole.OWNER
    assert await gate.card_for(PHONE[0].sign_public) is None
    # In clear, with no copy yet: only a log whose first entry a pairing controller wrote.
    alien = DeviceLog.genesis(PHONE[0], PHONE[1], ACCOUNT, at=NOW)
    assert not (
        await gate.offer(PHONE[0].sign_public, alien.encode(), authenticated=False, now=NOW)
    ).changed
    # Over KK from a device not in the offered log: refused.
    stranger = NodeKeys.generate(counter_rng(b"stranger")).sign_public
    assert not (await gate.offer(stranger, log.encode(), authenticated=True, now=NOW)).changed
    assert await audited(machine, "device-log.refused")
    taken = await gate.offer(
        machine.controller.sign_public, log.encode(), authenticated=True, now=NOW
    )
    assert taken.changed
    assert await gate.card_for(PHONE[0].sign_public) == PHONE[1]
    # The copy survives a restart (a fresh gate reads it from the store).
    assert (await DeviceGate(machine.store).load()) is not None


async def test_roles_are_enforced_and_refusals_audited(machine: Machine) -> None:
    gate, log = await gate_for(machine)
    await gate.offer(machine.controller.sign_public, log.encode(), authenticated=True, now=NOW)
    await gate.check(PHONE[0].sign_public, Action.WATCH, now=NOW)
    with pytest.raises(RoleRefused, match=r"\(viewer\) does not allow approve"):
        await gate.check(PHONE[0].sign_public, Action.APPROVE, now=NOW)
    await gate.check(TABLET[0].sign_public, Action.APPROVE, now=NOW)
    with pytest.raises(RoleRefused):
        await gate.check(TABLET[0].sign_public, Action.REVOKE_MACHINE, now=NOW)
    assert await audited(machine, "command.refused") == [
        "revoke-machine by operator",
        "approve by viewer",
    ]


async def test_a_viewer_may_not_point_the_machine_at_a_webhook(machine: Machine) -> None:
    """A webhook makes the machine POST to any address it reaches (its loopback, its
    LAN): a viewer may be notified, but only a device that may run commands there
    anyway may add a webhook target."""
    gate, log = await gate_for(machine)
    await gate.offer(machine.controller.sign_public, log.encode(), authenticated=True, now=NOW)
    add_target = COMMAND_ACTIONS["notify-target"]
    with pytest.raises(RoleRefused, match=r"\(viewer\)"):
        await gate.check(PHONE[0].sign_public, add_target, now=NOW)
    await gate.check(TABLET[0].sign_public, add_target, now=NOW)
    await gate.check(PHONE[0].sign_public, COMMAND_ACTIONS["notify-settings"], now=NOW)


async def test_a_missed_removal_is_learned_from_any_device_even_in_clear(machine: Machine) -> None:
    gate, log = await gate_for(machine)
    await gate.offer(machine.controller.sign_public, log.encode(), authenticated=True, now=NOW)
    newer, _ = log.append(machine.controller, Op.REMOVE, TABLET[0].sign_public, at=NOW + 1)
    offer = await gate.offer(PHONE[0].sign_public, newer.encode(), authenticated=False, now=NOW)
    assert offer.changed and offer.removed == (TABLET[0].sign_public,)
    assert await gate.card_for(TABLET[0].sign_public) is None
    assert not await gate.is_current(TABLET[0].sign_public)


async def test_tampered_forked_and_replayed_logs_leave_the_copy(machine: Machine) -> None:
    gate, log = await gate_for(machine)
    await gate.offer(machine.controller.sign_public, log.encode(), authenticated=True, now=NOW)
    head = log.head
    owner = machine.controller
    _, real = log.append(owner, Op.SET_ROLE, PHONE[0].sign_public, role=DeviceRole.OPERATOR, at=NOW)
    forged = [*log.entries, dataclasses.replace(real, role="owner")]  # signature no longer fits
    by_viewer = sign_entry(
        PHONE[0], ACCOUNT, 3, head.hash, Op.SET_ROLE, PHONE[0].sign_public, b"", "owner", NOW
    )
    fork = DeviceLog.verify(log.entries[:2]).append(owner, Op.REMOVE, PHONE[0].sign_public, at=NOW)[
        0
    ]
    offers = {
        "DeviceLogSignatureError": encode_entries(forged),
        "DeviceLogAuthorityError": encode_entries([*log.entries, by_viewer]),
        "DeviceLogForkError": fork.encode(),
        "DeviceLogStaleError": encode_entries(log.entries[:2]),  # a replay, in clear
    }
    for offered in offers.values():
        result = await gate.offer(owner.sign_public, offered, authenticated=False, now=NOW)
        assert not result.changed
    refusals = await audited(machine, "device-log.refused")
    assert sorted(r.split(":")[0] for r in refusals) == sorted(offers)
    assert gate.copy is not None and gate.copy.head == head


async def test_a_device_behind_gets_the_machines_copy_back(machine: Machine) -> None:
    gate, log = await gate_for(machine)
    await gate.offer(machine.controller.sign_public, log.encode(), authenticated=True, now=NOW)
    behind = await gate.offer(
        PHONE[0].sign_public, encode_entries(log.entries[:2]), authenticated=True, now=NOW
    )
    assert behind.behind and not behind.changed


async def test_two_devices_deciding_at_once_one_wins_50_times(machine: Machine) -> None:
    gate, log = await gate_for(machine)
    log, _ = log.append(
        machine.controller, Op.SET_ROLE, PHONE[0].sign_public, role=DeviceRole.OPERATOR, at=NOW
    )
    await gate.offer(machine.controller.sign_public, log.encode(), authenticated=True, now=NOW)
    machine.checkpoints.device_name = gate.name_of  # as daemon/live.py wires it
    for attempt in range(50):
        checkpoint, agent = await machine.raise_checkpoint()
        answers = []
        for n, (keys, _) in enumerate((PHONE, TABLET)):
            approve = (attempt + n) % 2 == 0
            signer = dataclasses.replace(machine, controller=keys)
            answers.append(
                machine.checkpoints.decide(
                    f"k-{attempt}-{n}",
                    signer.decision(checkpoint, approve=approve),
                    controller_key=keys.sign_public,
                )
            )
        results = await asyncio.gather(*answers, return_exceptions=True)
        async with asyncio.timeout(WAIT):
            outcome = await agent
        won = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if isinstance(r, TooLate)]
        assert len(won) == 1 and len(lost) == 1, (attempt, results)
        assert len(await machine.decided_events(checkpoint)) == 1
        winner = PHONE if results[0] is won[0] else TABLET
        assert outcome.decided_by == winner[0].fingerprint
        # "too late: ... by NAME (FINGERPRINT)": the device, by the name the log gives it
        assert f"by {winner[1].name} ({winner[0].fingerprint})" in str(lost[0])
