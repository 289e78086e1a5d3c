"""A relay restart keeps the registry and tells clients to come back."""

from __future__ import annotations

import signal
import threading

from starmux.control import CONTROL, ListMachines, MachineList, Notice, NoticeEvent, SessionStatus
from starmux.frames import FrameType
from starmux.identity import Role

from ..timeouts import scaled
from .conftest import RelayFactory, pair_machine, register_controller
from .node import RelayNode, ok


async def test_restart_keeps_registry_and_clients_reconnect(relay_factory: RelayFactory) -> None:
    relay = relay_factory()
    controller, account = await register_controller(relay)
    machine = await pair_machine(relay, controller, account)

    # Graceful stop: a RESTARTING notice with a retry hint, then close code 1012.
    stopper = threading.Thread(target=relay.stop, args=(signal.SIGTERM,))
    stopper.start()
    notice = CONTROL.decode_as((await machine.recv_type(FrameType.NOTICE)).body, Notice)
    assert notice.event is NoticeEvent.RESTARTING
    assert 0 <= notice.retry_after <= 1.0
    assert await machine.expect_close() == 1012
    stopper.join(timeout=scaled(15))
    assert relay.process is None

    restarted = relay_factory(data_dir=relay.data_dir)
    assert restarted.fingerprint == relay.fingerprint  # same relay key
    assert restarted.registration_token is None  # an account exists: no new token

    again_controller = RelayNode(Role.CONTROLLER, keys=controller.keys)
    auth = await again_controller.connect(
        restarted.url, pin=controller.auth.relay_card.sign_public if controller.auth else None
    )
    assert (auth.status, auth.account) == (SessionStatus.CONTROLLER, account)
    again_machine = RelayNode(Role.MACHINE, keys=machine.keys, name=machine.name)
    auth = await again_machine.connect(restarted.url)
    assert (auth.status, auth.account) == (SessionStatus.MACHINE, account)

    listing = ok(await again_controller.request(ListMachines(1)))
    assert isinstance(listing, MachineList)
    assert [(m.machine_key, m.online) for m in listing.machines] == [(machine.key, True)]
    await again_controller.send(FrameType.DATA, machine.key, b"after restart")
    assert (await again_machine.recv_type(FrameType.DATA)).body == b"after restart"


async def test_sigkill_leaves_a_consistent_registry(relay_factory: RelayFactory) -> None:
    relay = relay_factory()
    controller, account = await register_controller(relay)
    machine = await pair_machine(relay, controller, account)
    relay.kill()
    restarted = relay_factory(data_dir=relay.data_dir)
    again = RelayNode(Role.MACHINE, keys=machine.keys, name=machine.name)
    assert (await again.connect(restarted.url)).status is SessionStatus.MACHINE
