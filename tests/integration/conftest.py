from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from starmux.control import (
    AccountRegistered,
    CreateTicket,
    GrantMachine,
    MachineGranted,
    OpenTicket,
    RegisterAccount,
    TicketCreated,
    TicketOpened,
)
from starmux.frames import FrameType
from starmux.identity import Role

from .daemon_process import DaemonProcess
from .node import RelayNode, ok
from .relay_process import RelayProcess

RelayFactory = Callable[..., RelayProcess]


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    started: list[RelayProcess] = []

    def make(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
        preexec: Callable[[], None] | None = None,
        fake_clock: bool = False,
    ) -> RelayProcess:
        """``fake_clock``: the relay's clock moves only by ``relay.advance_clock``
        (plus real time), so a test never sleeps for a lifetime to run out."""
        relay = RelayProcess(
            data_dir or tmp_path / f"relay{len(started)}",
            env=env or {},
            extra_args=args or [],
            preexec=preexec,
            clock_file=tmp_path / f"relay{len(started)}.clock" if fake_clock else None,
        )
        if port is not None:
            relay.port = port
        started.append(relay)
        return relay.start()

    yield make
    for relay in started:
        relay.kill()


@pytest.fixture(autouse=True)
def stop_controller_agents(tmp_path: Path) -> Iterator[None]:
    """Controller commands start a controller agent per home on demand; stop the ones
    this test's homes started (they would otherwise outlive the test)."""
    yield
    from starmux.client.agent_process import read_status, stop_agent

    for status_file in tmp_path.rglob("controller.json"):
        status = read_status(status_file.parent)
        if status is not None and status.alive:
            stop_agent(status_file.parent)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes a test started; stopped after it."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    return relay_factory()


async def register_controller(
    relay: RelayProcess, token: str | None = None, name: str = "laptop"
) -> tuple[RelayNode, bytes]:
    controller = RelayNode(Role.CONTROLLER, name)
    await controller.connect(relay.url)
    reply = ok(
        await controller.request(
            RegisterAccount(1, token if token is not None else relay.registration_token or "")
        )
    )
    assert isinstance(reply, AccountRegistered)
    return controller, reply.account


async def pair_machine(
    relay: RelayProcess, controller: RelayNode, account: bytes, name: str = "gpu-box"
) -> RelayNode:
    """Pair a fresh machine through the relay's ticket flow (no Noise: relay-level only)."""
    machine = RelayNode(Role.MACHINE, name)
    await machine.connect(relay.url)
    ticket = ok(await machine.request(CreateTicket(1)))
    assert isinstance(ticket, TicketCreated)
    opened = ok(await controller.request(OpenTicket(2, ticket.ticket)))
    assert isinstance(opened, TicketOpened) and opened.machine_key == machine.key
    now = time.time()
    card = machine.card.encode()
    granted = ok(
        await controller.request(
            GrantMachine(3, ticket.ticket, card, now, controller.grant(account, card, now))
        )
    )
    assert isinstance(granted, MachineGranted)
    await machine.recv_type(FrameType.NOTICE)
    return machine
