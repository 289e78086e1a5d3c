"""What the controller's session commands do, inside the controller agent: the
device's state (store, cache, the current :class:`LiveController`), the outbox path
every command takes, and the session operations (list, approvals, logs/watch, run,
cancel, decide). Machines (list, rename, revoke) are in :mod:`.machine_admin`, the
outbox as a person sees it in :mod:`.outbox_report`, review in :mod:`.review`;
the JSON shapes in :mod:`.session_views`.

The agent (:mod:`starmux.client.agent`) owns the one relay connection and replaces
the :class:`LiveController` after every reconnect; the methods here read the cache
at once and reach machines through whichever controller is current.

Invariants:
- Read-only operations (sessions, approvals, machines, logs) never wait on a machine:
  they answer from the cache, with how fresh each machine's part is.
- ``watch`` is exact: it streams the session's events from the cache in ``seq``
  order after the last one it sent, and wakes when the controller applied more
  (events are applied exactly once, so nothing is skipped or repeated, across
  reconnects too).
- A command waits for its ack on whichever controller is current: an ack recorded
  while the link was being replaced is found in the cache.
- A revoked machine's pending checkpoints leave ``approvals`` (its sessions end as
  ``revoked``: see :mod:`.machine_admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starmux.codec import Message
from starmux.decisions import decision_transcript
from starmux.errors import ConnectionLost, StarmuxError
from starmux.identity import NodeKeys
from starmux.messages import (
    APP,
    CancelSession,
    CommandAck,
    DecideCheckpoint,
    LoggedEvent,
    StartSession,
)

from .agent_client import relay_link_released_async
from .cache import Cache, CheckpointRow, SessionRow
from .device_copy import DeviceRemoved
from .live import EventCallback, LiveController
from .session_views import ENDED, REVOKED, checkpoint_json, output_of, session_json, status_of
from .store import ControllerConfig, ControllerStore, KnownMachine
from .transfers import ControllerTransfers

#: How long a command waits for a live machine's ack before saying "queued".
ACK_WITHIN = 10.0


class OperationFailed(StarmuxError):
    """An operation the agent refuses; ``code`` goes on the wire (see agent_protocol)."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint=hint or None)
        self.code = code


@contextlib.asynccontextmanager
async def live_controller(
    home: Path, *, on_event: EventCallback | None = None, required: bool = True
) -> AsyncIterator[tuple[ControllerStore, LiveController | None]]:
    """A store and (if the relay answers) a live controller of its own, outside the
    agent: for tests and tools that drive the protocol directly. A running agent is
    asked to stay off the relay meanwhile: one key, one connection."""
    async with (
        relay_link_released_async(home),
        _live_controller(home, on_event=on_event, required=required) as live,
    ):
        yield live


@contextlib.asynccontextmanager
async def _live_controller(
    home: Path, *, on_event: EventCallback | None, required: bool
) -> AsyncIterator[tuple[ControllerStore, LiveController | None]]:
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


def signed_decision(
    keys: NodeKeys, checkpoint: CheckpointRow, *, approve: bool, reason: str
) -> DecideCheckpoint:
    decided_at = time.time()
    signature = keys.sign(
        decision_transcript(checkpoint.machine, checkpoint.id, approve, reason, decided_at)
    )
    return DecideCheckpoint(checkpoint.id, approve, reason, decided_at, signature)


@dataclass
class ControllerState:
    """The device as the agent holds it; ``controller`` is None while the relay is away."""

    store: ControllerStore
    config: ControllerConfig
    keys: NodeKeys
    cache: Cache
    controller: LiveController | None = None
    relay_error: str = "not connected yet"
    relay_hint: str = ""
    #: the relay answered with another key than the pinned one: every command says so
    relay_key_changed: bool = False
    #: an owner removed this device: the relay refuses it for good, every command says so
    removed: bool = False
    #: machine key → when it was last live (synced) while this agent ran
    last_live: dict[bytes, float] = field(default_factory=dict)
    #: machine key → the relay's last_seen from its latest listing
    last_seen: dict[bytes, float | None] = field(default_factory=dict)
    #: session id → events woken when the controller applied something for it
    watchers: dict[str, set[asyncio.Event]] = field(default_factory=dict)
    #: set (and replaced) whenever a new controller becomes current
    controller_changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: file transfers in progress: they resume on the next connection
    transfers: ControllerTransfers = field(default_factory=lambda: ControllerTransfers(cap=1 << 30))
    #: services that follow applied events (the fleet's task reports); no I/O in them
    event_hooks: list[EventCallback] = field(default_factory=list)

    # --- called by the agent --------------------------------------------------------

    def on_event(self, machine: bytes, event: LoggedEvent) -> None:
        for wake in self.watchers.get(event.session, ()):
            wake.set()
        for hook in self.event_hooks:
            hook(machine, event)

    def set_controller(
        self,
        controller: LiveController | None,
        error: str = "",
        *,
        hint: str = "",
        key_changed: bool = False,
    ) -> None:
        self.controller = controller
        self.relay_error = error
        self.relay_hint = hint
        self.relay_key_changed = key_changed
        changed, self.controller_changed = self.controller_changed, asyncio.Event()
        changed.set()
        for wakes in self.watchers.values():
            for wake in wakes:
                wake.set()

    def mark_removed(self) -> None:
        self.removed = True
        self.set_controller(None, "this device was removed from its account")

    def note_live(self) -> None:
        if self.controller is not None:
            now = time.time()
            for key, machine in self.controller.machines.items():
                if machine.live.is_set():
                    self.last_live[key] = now

    # --- freshness ------------------------------------------------------------------

    async def freshness(self) -> list[dict[str, Any]]:
        """Per paired machine: online, synced, and when its cached part was last fresh."""
        self.note_live()
        rows = []
        for machine in await self.store.machines():
            channel = self.controller.machines.get(machine.key) if self.controller else None
            rows.append(
                {
                    "name": machine.name,
                    "fingerprint": machine.fingerprint,
                    "online": bool(channel and channel.online),
                    "live": bool(channel and channel.live.is_set()),
                    "last_live": self.last_live.get(machine.key),
                    "last_seen": self.last_seen.get(machine.key, machine.last_seen),
                }
            )
        return rows

    # --- the interface the other operation modules use (review, machines, notify) -

    async def machine_names(self) -> dict[bytes, str]:
        """Paired machine key → this controller's name for it."""
        return {m.key: m.name for m in await self.store.machines()}

    async def known_session(self, session_id: str) -> SessionRow:
        """The cached session, or ``not-found`` for the person."""
        row = await self.cache.session(session_id)
        if row is None:
            raise OperationFailed(
                "not-found",
                f"no session {session_id!r} known here",
                "see `starmux sessions` (it lists what this controller has synced)",
            )
        return row

    async def machine_by_key(self, key: bytes) -> KnownMachine:
        """The paired machine with this key, or ``refused``: it was revoked."""
        for machine in await self.store.machines():
            if machine.key == key:
                return machine
        raise OperationFailed(
            "refused",
            "the machine of this session was revoked",
            "its sessions ended as `revoked`; pair it again to use it",
        )

    async def relay(self) -> dict[str, Any]:
        return {
            "connected": self.controller is not None,
            "error": self.relay_error,
            "hint": self.relay_hint,
            "key_changed": self.relay_key_changed,
        }

    # --- read-only ------------------------------------------------------------------

    async def ending_reason(self, row: SessionRow) -> str:
        """Why a session ended badly, as its machine said (e.g. "could not start: …
        not found on the session's PATH"); "" for a clean or unfinished one."""
        if row.status not in ("failed", "lost", "cancelled"):
            return ""
        bodies = await self.store.db.execute_fetchall(
            "SELECT seq, at, session, body FROM events WHERE machine = ? AND session = ? "
            "ORDER BY seq DESC LIMIT 50",
            (row.machine, row.id),
        )
        for seq, at, session, body in bodies:
            status = status_of(LoggedEvent(seq, at, session, bytes(body)))
            if status is not None:
                return status.detail
        return ""

    async def sessions(self, machine: str | None) -> dict[str, Any]:
        key = (await self.store.find_machine(machine)).key if machine else None
        names = await self.machine_names()
        rows = await self.cache.sessions(key)
        listed = []
        for row in rows:
            entry = session_json(row, names)
            if row.status == "failed" and row.exit_code is None:  # it never ran
                entry["reason"] = await self.ending_reason(row)
            listed.append(entry)
        return {
            "sessions": listed,
            "machines": await self.freshness(),
            "relay": await self.relay(),
        }

    async def approvals(self) -> dict[str, Any]:
        now = time.time()
        names = await self.machine_names()
        ended = {(r.machine, r.id) for r in await self.cache.sessions() if r.status in ENDED}
        rows = [
            c
            for c in await self.cache.checkpoints()
            if c.expires_at > now and (c.machine, c.session) not in ended and c.machine in names
        ]
        return {
            "approvals": [checkpoint_json(c, names) for c in rows],
            "machines": await self.freshness(),
            "relay": await self.relay(),
        }

    async def stream_session(
        self,
        session_id: str,
        send: Callable[[str, int, Any], Awaitable[None]],
        *,
        follow: bool,
        after: int = 0,
    ) -> SessionRow:
        """Send the session's output and status changes after event ``after``, in
        order (``send(kind, seq, payload)``); with ``follow``, keep going until it
        ends. Returns its last row."""
        row = await self.known_session(session_id)
        wake = asyncio.Event()
        self.watchers.setdefault(session_id, set()).add(wake)
        sent = after
        said_offline = False
        try:
            while True:
                wake.clear()
                # The row before the events: a row that says ended then means every
                # event up to the end is stored (one transaction applies both), so the
                # read below gets them all. Read after, an end applied while the events
                # were being sent ended the watch without the output that came with it.
                row = await self.cache.session(session_id, row.machine) or row
                events = await self.cache.session_events(
                    session_id, after=sent, machine=row.machine
                )
                for event in events:
                    sent = event.seq
                    chunk = output_of(event)
                    if chunk is not None:
                        await send("output", event.seq, chunk)
                    elif (status := status_of(event)) is not None:
                        await send("status", event.seq, status)
                if not follow or row.status in ENDED:
                    return row
                online = self.controller is not None and self.controller.is_online(row.machine)
                if not online and not said_offline:
                    said_offline = True
                    why = "relay unreachable" if self.controller is None else "machine offline"
                    await send("notice", sent, f"{why}; waiting for it to come back")
                elif online:
                    said_offline = False
                await wake.wait()
                if self.removed:
                    raise DeviceRemoved()
        finally:
            self.watchers[session_id].discard(wake)
            if not self.watchers[session_id]:
                del self.watchers[session_id]

    # --- commands -------------------------------------------------------------------

    async def issue(self, machine: KnownMachine, command: Message) -> dict[str, Any]:
        """Put a command in the outbox; if its machine is live, deliver it and wait for
        the ack (on whichever controller is current)."""
        command_id = "k-" + secrets.token_hex(8)
        await self.cache.enqueue(command_id, machine.key, command.KIND, APP.encode(command))
        ack = await self._await_ack(machine.key, command_id, within=ACK_WITHIN)
        return {
            "command_id": command_id,
            "machine": machine.name,
            "queued": ack is None,
            "accepted": ack.ok if ack else None,  # not "ok": that names the reply itself
            "error": ack.error if ack else None,
            "hint": ack.hint if ack else None,
            "result": ack.result if ack else None,
        }

    async def _await_ack(
        self, machine_key: bytes, command_id: str, *, within: float
    ) -> CommandAck | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            controller = self.controller
            channel = controller.machines.get(machine_key) if controller else None
            if controller is None or channel is None or not channel.online:
                return await self._stored_ack(command_id, machine_key)
            future = channel.acks.setdefault(command_id, loop.create_future())
            stored = await self._stored_ack(command_id, machine_key)
            if stored is not None:
                return stored
            if channel.live.is_set():
                # Sent now (the outbox goes out by itself when the machine gets live).
                await controller.flush_outbox(channel)
            changed = asyncio.ensure_future(self.controller_changed.wait())
            remaining = deadline - loop.time()
            if remaining <= 0:
                changed.cancel()
                return None
            waits: set[asyncio.Future[Any]] = {future, changed}
            done, _ = await asyncio.wait(
                waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            changed.cancel()
            if future in done:
                return future.result()
            if not done:
                return await self._stored_ack(command_id, machine_key)

    async def _stored_ack(self, command_id: str, machine_key: bytes) -> CommandAck | None:
        stored = await self.cache.command(command_id, machine_key)
        if stored is None or not stored.acked:
            return None
        return CommandAck(
            command_id, bool(stored.ok), stored.error or "", stored.hint or "", stored.result or ""
        )

    async def run(
        self,
        machine: str,
        argv: list[str],
        *,
        cwd: str,
        title: str,
        env: dict[str, str],
        pty: bool,
        attachments: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        target = await self.store.find_machine(machine)
        session = "s-" + secrets.token_hex(5)
        sent = await self._send_attachments(target, attachments or [], progress)
        request = StartSession(
            session, tuple(argv), cwd, title or " ".join(argv)[:80], env, pty, sent
        )
        return {"session": session, **await self.issue(target, request)}

    async def _send_attachments(
        self,
        target: KnownMachine,
        paths: list[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[str, ...]:
        """Send a run's attachments before its command: each is checked against the
        cap first (nothing is sent if one is over it), and the machine must be online."""
        if not paths:
            return ()
        try:
            for path in paths:
                self.transfers.check_upload(Path(path))
        except StarmuxError as exc:
            raise OperationFailed("refused", exc.message, exc.hint or "") from exc
        controller = self.controller
        channel = controller.machines.get(target.key) if controller else None
        if channel is None or not channel.live.is_set():
            raise OperationFailed(
                "unavailable",
                f"{target.name} is not online: attachments are sent before the command starts",
                "run it again when `starmux machines` shows the machine online",
            )
        try:
            return tuple(
                [await self.transfers.upload(target.key, Path(p), progress) for p in paths]
            )
        except StarmuxError as exc:
            raise OperationFailed("refused", exc.message, exc.hint or "") from exc

    async def cancel(self, session_id: str) -> dict[str, Any]:
        row = await self.known_session(session_id)
        if row.status == REVOKED:
            raise OperationFailed(
                "too-late", f"session {session_id} ended: its machine was revoked"
            )
        machine = await self.machine_by_key(row.machine)
        return {"session": session_id, **await self.issue(machine, CancelSession(session_id))}

    async def decide(self, checkpoint: str, *, approve: bool, reason: str) -> dict[str, Any]:
        checkpoint_id = checkpoint
        row = await self.cache.checkpoint(checkpoint_id)
        if row is None:
            raise OperationFailed(
                "not-found",
                f"no checkpoint {checkpoint_id!r} known here",
                "see `starmux approvals`",
            )
        session = await self.cache.session(row.session, row.machine)
        if session is not None and session.status in ENDED and row.decision is None:
            raise OperationFailed(
                "too-late",
                f"too late: the session ended ({session.status}) before a decision",
                "nothing was sent; see `starmux logs " + row.session + "`",
            )
        machine = await self.machine_by_key(row.machine)
        decision = signed_decision(self.keys, row, approve=approve, reason=reason)
        return {"checkpoint": checkpoint_id, **await self.issue(machine, decision)}
