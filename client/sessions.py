"""What the controller's session commands do: run, sessions, watch, logs, cancel,
approvals, approve, deny. Async functions over :class:`LiveController`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starmux.backoff import Backoff
from starmux.codec import Message
from starmux.decisions import decision_transcript
from starmux.errors import ConnectionLost, StarmuxError, UsageError
from starmux.identity import NodeKeys
from starmux.messages import (
    APP,
    CancelSession,
    CommandAck,
    DecideCheckpoint,
    LoggedEvent,
    Output,
    SessionStatusChanged,
    StartSession,
)
from starmux.session_state import TERMINAL

from .cache import Cache, CheckpointRow, SessionRow
from .live import EventCallback, LiveController
from .store import ControllerStore, KnownMachine


@dataclass(frozen=True)
class CommandOutcome:
    command_id: str
    machine: KnownMachine
    queued: bool  # the machine was offline: the command waits in the outbox
    ack: CommandAck | None


@contextlib.asynccontextmanager
async def live_controller(
    home: Path, *, on_event: EventCallback | None = None, required: bool = True
) -> AsyncIterator[tuple[ControllerStore, LiveController | None]]:
    """Open the store and (if possible) a live controller; with ``required=False`` a
    relay that cannot be reached yields ``None`` so commands can show cached data."""
    async with ControllerStore(home) as store:
        config = await store.config()
        controller = LiveController(store, config, on_event=on_event)
        try:
            await controller.start()
        except ConnectionLost:
            if required:
                raise
            yield store, None
            return
        try:
            yield store, controller
        finally:
            await controller.close()


async def _issue(
    home: Path,
    command: Message,
    *,
    machine_query: str | None = None,
    machine_key: bytes | None = None,
    within: float = 30.0,
) -> CommandOutcome:
    """Put a command in the outbox, deliver it if the machine is online, await its ack."""
    async with ControllerStore(home) as store:
        if machine_query is not None:
            machine = await store.find_machine(machine_query)
        else:
            machine = next(m for m in await store.machines() if m.key == machine_key)
        command_id = "k-" + secrets.token_hex(8)
        await Cache(store.db).enqueue(command_id, machine.key, command.KIND, APP.encode(command))
    async with live_controller(home, required=False) as (_, controller):
        if controller is None or not controller.is_online(machine.key):
            return CommandOutcome(command_id, machine, True, None)
        await controller.wait_live([machine.key], within=within)
        ack = await controller.command_ack(machine.key, command_id, within=within)
        return CommandOutcome(command_id, machine, ack is None, ack)


async def run(
    home: Path,
    machine: str,
    argv: list[str],
    *,
    cwd: str,
    title: str,
    env: dict[str, str],
    pty: bool,
) -> tuple[str, CommandOutcome]:
    session = "s-" + secrets.token_hex(5)
    request = StartSession(session, tuple(argv), cwd, title or " ".join(argv)[:80], env, pty)
    return session, await _issue(home, request, machine_query=machine)


async def _session_machine(home: Path, session_id: str) -> SessionRow:
    async with ControllerStore(home) as store:
        row = await Cache(store.db).session(session_id)
    if row is None:
        raise UsageError(
            f"no session {session_id!r} known here",
            hint="see `starmux sessions` (it syncs from online machines)",
        )
    return row


async def cancel(home: Path, session_id: str) -> CommandOutcome:
    row = await _session_machine(home, session_id)
    return await _issue(home, CancelSession(session_id), machine_key=row.machine)


async def sessions(
    home: Path, machine: str | None
) -> tuple[list[SessionRow], bool, dict[bytes, str]]:
    """All cached sessions after syncing online machines; (rows, fresh, machine names)."""
    async with live_controller(home, required=False) as (store, controller):
        if controller is not None:
            await controller.wait_live()
        key = (await store.find_machine(machine)).key if machine else None
        rows = await Cache(store.db).sessions(key)
        names = {m.key: m.name for m in await store.machines()}
        return rows, controller is not None, names


def output_of(event: LoggedEvent) -> tuple[str, bytes] | None:
    try:
        message = APP.decode(event.body)
    except StarmuxError:
        return None
    if isinstance(message, Output):
        return message.stream, message.data
    return None


async def logs(home: Path, session_id: str) -> tuple[SessionRow, list[LoggedEvent]]:
    row = await _session_machine(home, session_id)
    async with live_controller(home, required=False) as (store, controller):
        if controller is not None:
            await controller.wait_live([row.machine])
        cache = Cache(store.db)
        fresh = await cache.session(session_id)
        return fresh or row, await cache.session_events(session_id)


async def watch(
    home: Path,
    session_id: str,
    *,
    write: Callable[[str, bytes], None],
    status: Callable[[str], None],
) -> SessionRow:
    """Print past output, then follow live across reconnects until the session ends."""
    row = await _session_machine(home, session_id)
    async with ControllerStore(home) as store:
        printed = 0
        for event in await Cache(store.db).session_events(session_id):
            chunk = output_of(event)
            if chunk:
                write(*chunk)
            printed = event.seq
    finished = asyncio.Event()

    def on_event(machine: bytes, event: LoggedEvent) -> None:
        nonlocal printed
        if machine != row.machine or event.session != session_id or event.seq <= printed:
            return
        printed = event.seq
        chunk = output_of(event)
        if chunk:
            write(*chunk)
            return
        with contextlib.suppress(StarmuxError):
            message = APP.decode(event.body)
            if isinstance(message, SessionStatusChanged):
                status(message.status)
                if message.status in TERMINAL:
                    finished.set()

    backoff = Backoff(cap=10.0)
    while row.status not in TERMINAL:
        try:
            async with live_controller(home, on_event=on_event) as (store, controller):
                assert controller is not None
                backoff.reset()
                if not controller.is_online(row.machine):
                    status("machine offline; waiting for it to come back")
                done = asyncio.ensure_future(finished.wait())
                lost = asyncio.ensure_future(controller.closed.wait())
                await asyncio.wait({done, lost}, return_when=asyncio.FIRST_COMPLETED)
                done.cancel()
                lost.cancel()
                controller.raise_failure()
                fresh = await Cache(store.db).session(session_id)
                row = fresh or row
        except ConnectionLost as exc:
            delay = backoff.next_delay()
            status(f"relay unreachable ({exc.message}); retrying in {delay:.1f}s")
            await asyncio.sleep(delay)
    return row


async def approvals(home: Path) -> tuple[list[CheckpointRow], bool, dict[bytes, str]]:
    async with live_controller(home, required=False) as (store, controller):
        if controller is not None:
            await controller.wait_live()
        now = time.time()
        rows = [c for c in await Cache(store.db).checkpoints() if c.expires_at > now]
        names = {m.key: m.name for m in await store.machines()}
        return rows, controller is not None, names


def signed_decision(
    keys: NodeKeys, checkpoint: CheckpointRow, *, approve: bool, reason: str
) -> DecideCheckpoint:
    decided_at = time.time()
    signature = keys.sign(
        decision_transcript(checkpoint.machine, checkpoint.id, approve, reason, decided_at)
    )
    return DecideCheckpoint(checkpoint.id, approve, reason, decided_at, signature)


async def decide(home: Path, checkpoint_id: str, *, approve: bool, reason: str) -> CommandOutcome:
    async with live_controller(home, required=False) as (store, controller):
        if controller is not None:
            await controller.wait_live()
        row = await Cache(store.db).checkpoint(checkpoint_id)
        keys = store.keys()
    if row is None:
        raise UsageError(
            f"no checkpoint {checkpoint_id!r} known here", hint="see `starmux approvals`"
        )
    decision = signed_decision(keys, row, approve=approve, reason=reason)
    return await _issue(home, decision, machine_key=row.machine)
