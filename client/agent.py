"""The controller agent: one long-lived process per controller home that holds the
device's single relay connection, its KK channels, the cache and the outbox, applies
events continuously and answers the CLI commands over a Unix socket.

Why one process: the relay keeps one connection per key and closes the older one when
the same key connects again (close 4013). Commands that each opened their own
connection knocked each other (and every ``watch``) off the relay. Now only the agent
connects; commands are clients of it (:mod:`starmux.client.agent_client`) and any
number of them run at once.

Shape::

    ControllerAgent.run()
      ├─ ProcessLock(controller.lock / controller.json)   one agent per home
      ├─ Unix server  <home>/controller.sock (0600)         one task per command
      │     request line → ControllerState method → stream items + final reply
      └─ link loop: LiveController.start() → current → closed → backoff → again

Plug-in points for work that must run while no command does (placing queued tasks,
reminders and notifications, the local web UI): :attr:`ControllerAgent.services` are
started with the agent and given its :class:`ControllerState`; they see every applied
event through :meth:`ControllerState.on_event` and reach machines through its methods.

Invariants:
- The socket is created by the lock holder only (so unlinking a stale one never takes
  a live agent's away), in the home (0700), itself 0600.
- A command's connection ending (Ctrl-C in ``watch``) cancels only that command.
- A failure inside one command is that command's failure reply; the agent goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from starmux import agent_protocol as wire
from starmux.backoff import Backoff
from starmux.errors import StarmuxError, UsageError
from starmux.home import ensure_private_dir
from starmux.messages import SessionStatusChanged
from starmux.node import event_loop
from starmux.reconnect import LinkFailure, close_failure
from starmux.relay_auth import RelayKeyMismatch

from . import machine_admin, outbox_report, review, task_watch
from .agent_client import socket_path
from .agent_process import AGENT_FILES, AgentState
from .artifacts import (
    destination,
    fetch,
    fetched_json,
    file_size_cap,
    find_artifact,
    list_artifacts,
)
from .cache import Cache
from .device_copy import DeviceRemoved
from .fleet import Fleet
from .live import LiveController
from .sessions import ControllerState, OperationFailed
from .store import ControllerStore
from .transfers import ControllerTransfers

log = logging.getLogger("starmux.controller.agent")

#: How long a read-only command waits for the first sync after the agent started.
FIRST_SYNC_WAIT = 10.0
#: how long the agent stays off the relay after another connection with this device's
#: key replaced its own (see :func:`_link_loop`)
REPLACED_WAIT = 30.0
REPLACED_WHY = "another connection with this device's key replaced the agent's"
REPLACED_HINT = (
    "stop the other process using this device's keys (a copied starmux home?); "
    "each device needs its own: `starmux link` makes one"
)


def was_replaced(controller: LiveController) -> bool:
    """The relay closed the link because the same key connected again elsewhere."""
    reason = controller.close_reason
    if reason is None:
        return False
    return close_failure(reason.code, connected=True) is LinkFailure.REPLACED


#: The agent exits if its home disappears (a deleted test folder, a removed profile).
HOME_CHECK_INTERVAL = 5.0
#: Seconds between the progress items of a `get`.
PROGRESS_EVERY = 0.2

#: A service runs for the agent's life with the device state (see the module docstring).
Service = Callable[[ControllerState], Coroutine[Any, Any, None]]


class ControllerAgent:
    def __init__(self, home: Path, *, services: list[Service] | None = None) -> None:
        self.home = home
        self.services = services or []
        self.state: ControllerState | None = None
        self.fleet: Fleet | None = None  # task placement (issue 18), a built-in service
        self.stopping = asyncio.Event()
        self.first_sync = asyncio.Event()
        self.first_connect = asyncio.Event()  # the first connection attempt ended
        self.link_released = 0  # requests holding the relay connection free
        self._link_free = asyncio.Event()
        self._link_free.set()
        self._release = asyncio.Event()
        #: the commands being answered; cancelled (no reply) before the store closes
        self._clients: set[asyncio.Task[Any]] = set()
        self._started = time.time()

    async def run(self, *, on_ready: Callable[[], None] | None = None) -> None:
        async with ControllerStore(self.home) as store:
            config = await store.config()
            keys = store.keys()
            self.state = ControllerState(
                store,
                config,
                keys,
                Cache(store.db),
                transfers=ControllerTransfers(cap=file_size_cap()),
            )
            self.fleet = Fleet(self.state)
            path = socket_path(self.home)
            path.unlink(missing_ok=True)  # a leftover: we hold the lock
            old_umask = os.umask(0o177)
            try:
                server = await asyncio.start_unix_server(
                    self._serve, path=str(path), limit=wire.MAX_REQUEST + 1
                )
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stopping.set)
            if on_ready is not None:
                on_ready()
            tasks = [
                asyncio.create_task(self._link_loop()),
                asyncio.create_task(self._watch_home()),
                asyncio.create_task(self.fleet.run()),
                *(asyncio.create_task(service(self.state)) for service in self.services),
            ]
            try:
                await self.stopping.wait()
            finally:
                server.close()
                # Commands end without a reply (a watch resumes on the next agent);
                # then the link and services; the store closes after all of them.
                tasks = [*self._clients, *tasks]
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        await task
                path.unlink(missing_ok=True)

    # --- the relay link -----------------------------------------------------------

    async def _link_loop(self) -> None:
        assert self.state is not None
        state = self.state
        backoff = Backoff(cap=10.0)
        while True:
            await self._link_free.wait()
            controller = LiveController(
                state.store, state.config, on_event=state.on_event, transfers=state.transfers
            )
            try:
                await controller.start()
            except DeviceRemoved:
                with contextlib.suppress(Exception):
                    await controller.close()
                self._removed_for_good()
                return
            except (StarmuxError, OSError) as exc:
                # Unreachable, refused, or a relay with another key: say so to every
                # command (status, freshness) and keep trying; the cache still answers.
                with contextlib.suppress(Exception):
                    await controller.close()
                why = exc.message if isinstance(exc, StarmuxError) else str(exc)
                hint = (exc.hint or "") if isinstance(exc, StarmuxError) else ""
                state.set_controller(
                    None, why, hint=hint, key_changed=isinstance(exc, RelayKeyMismatch)
                )
                self.first_connect.set()
                self.first_sync.set()
                delay = backoff.next_delay()
                log.warning("relay unreachable (%s); retrying in %.1fs", why, delay)
                await self._sleep_unless_released(delay)
                continue
            backoff.reset()
            state.set_controller(controller)
            self.first_connect.set()
            log.info("connected to the relay")
            try:
                with contextlib.suppress(StarmuxError):
                    await controller.wait_live(within=FIRST_SYNC_WAIT)
                state.note_live()
                self.first_sync.set()
                released = asyncio.ensure_future(self._wait_released())
                closed = asyncio.ensure_future(controller.closed.wait())
                await asyncio.wait({released, closed}, return_when=asyncio.FIRST_COMPLETED)
                released.cancel()
                closed.cancel()
            finally:
                state.note_live()
                reason = controller.close_reason
                replaced = not self.link_released and was_replaced(controller)
                await controller.close()
                why = (
                    "released for another command"
                    if self.link_released
                    else (f"connection lost ({reason})" if reason else "connection lost")
                )
                state.set_controller(
                    None,
                    REPLACED_WHY if replaced else why,
                    hint=REPLACED_HINT if replaced else "",
                )
                log.info("relay link ended: %s", why)
            if isinstance(controller.failure, DeviceRemoved):
                self._removed_for_good()
                return
            if controller.failure is not None:
                log.warning("the controller stopped: %r", controller.failure)
            if replaced:
                # Reconnecting at once would replace the other connection in turn, and
                # it would do the same: two holders of one key closing each other many
                # times a second. Stay off long enough for a tool to finish, and say why.
                delay = REPLACED_WAIT + backoff.next_delay()
                log.warning("%s; trying again in %.0fs (%s)", REPLACED_WHY, delay, REPLACED_HINT)
                await self._sleep_unless_released(delay)
            elif not self.link_released:
                await self._sleep_unless_released(backoff.next_delay())

    def _removed_for_good(self) -> None:
        """The relay refuses this device for good: no reconnecting; the cache stays,
        but every command (and a running watch) ends saying why."""
        assert self.state is not None
        log.warning("this device was removed from its account; not reconnecting")
        self.state.mark_removed()
        self.first_connect.set()
        self.first_sync.set()

    async def _wait_released(self) -> None:
        await self._release.wait()

    async def _sleep_unless_released(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stopping.wait()

    async def _watch_home(self) -> None:
        identity = os.stat(self.home)
        while True:
            await asyncio.sleep(HOME_CHECK_INTERVAL)
            try:
                now = os.stat(self.home)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (identity.st_dev, identity.st_ino):
                log.warning("the home %s is gone; stopping", self.home)
                self.stopping.set()
                return

    # --- commands -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            try:
                line = await reader.readuntil(b"\n")
                request = wire.parse_request(line.rstrip(b"\n"))
            except asyncio.LimitOverrunError:
                writer.write(wire.failure("bad-request", "the request line is too long"))
                return
            except asyncio.IncompleteReadError:
                return
            except wire.AgentProtocolError as exc:
                writer.write(wire.failure(exc.code, exc.message, exc.hint or ""))
                return
            work = asyncio.ensure_future(self._answer(request, writer))
            gone = asyncio.ensure_future(reader.read(1))  # EOF: the command went away
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                work.cancel()  # a no-op once it answered
                gone.cancel()
                with contextlib.suppress(BaseException):
                    await work
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            self._clients.discard(task)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: wire.Request, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._dispatch(request, writer)
        except OperationFailed as exc:
            reply = wire.failure(exc.code, exc.message, exc.hint or "")
        except UsageError as exc:
            reply = wire.failure("not-found", exc.message, exc.hint or "")
        except StarmuxError as exc:
            reply = wire.failure("unavailable", exc.message, exc.hint or "")
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("a %s request failed", request.op)
            reply = wire.failure(
                "internal",
                f"the controller agent failed: {type(exc).__name__}: {exc}",
                f"see {self.home / 'controller.log'}",
            )
        writer.write(reply)
        await writer.drain()

    async def _dispatch(self, request: wire.Request, writer: asyncio.StreamWriter) -> bytes:
        state, fleet = self.state, self.fleet
        assert state is not None and fleet is not None
        op, fields = request.op, request.fields
        if op == "ping":
            return wire.ok(pid=os.getpid())
        if op == "stop":
            self.stopping.set()
            return wire.ok(stopping=True)
        if op == "status":
            return wire.ok(**await self._status())
        if op == "release-link":
            return await self._release_link(writer)
        if state.removed:
            raise DeviceRemoved()
        if op == "machines":  # who is online: known once connected
            await self._wait_first(self.first_connect)
        elif op not in ("outbox", "tasks", "task"):  # what they did: known once synced
            await self._wait_first(self.first_sync)
        notes: dict[str, Any] = {}
        if op != "outbox":
            notes["refused"] = await outbox_report.unreported_failures(state)
            # What the relay's machine list got wrong (a card that is not the pinned
            # one...): every command repeats it while it lasts.
            if state.controller is not None and op != "machines":
                notes["warnings"] = list(state.controller.warnings)
        if op == "sessions":
            return wire.ok(**await state.sessions(fields["machine"]), **notes)
        if op == "approvals":
            return wire.ok(**await state.approvals(), **notes)
        if op == "machines":
            listing = await machine_admin.machines(state)
            for view in listing["machines"]:
                view.update(fleet.machine_fields(bytes.fromhex(view["key"])))
            return wire.ok(**listing, **notes)
        if op == "outbox":
            return wire.ok(**await outbox_report.outbox(state))
        if op in ("logs", "watch"):
            return await self._stream(writer, fields, follow=op == "watch", notes=notes)
        if op == "run":
            return wire.ok(**await state.run(**fields, progress=_progress_to(writer)), **notes)
        if op == "artifacts":
            return wire.ok(**await self._artifacts(fields["session"]), **notes)
        if op == "get":
            return await self._get(writer, fields, notes)
        if op == "cancel" and fleet.knows(fields["session"]):  # a task id
            return wire.ok(**await fleet.cancel(fields["session"]), **notes)
        if op == "cancel":
            return wire.ok(**await state.cancel(fields["session"]), **notes)
        if op == "submit":
            return wire.ok(**await fleet.submit(**fields), **notes)
        if op == "tasks" and fields["follow"]:
            async for item in task_watch.follow(fleet, state=fields["state"]):
                writer.write(wire.task_item(item["task"], item.get("event")))
                await writer.drain()  # a slow reader slows its own stream, nobody else's
            return wire.ok(**notes)
        if op == "tasks":
            return wire.ok(**await fleet.tasks(state=fields["state"]), **notes)
        if op == "task":
            return wire.ok(**await fleet.show(fields["task"]), **notes)
        if op == "tag":
            return wire.ok(**await fleet.tag(**fields), **notes)
        if op == "decide":
            return wire.ok(**await review.decide(state, **fields), **notes)
        if op == "approval":
            return wire.ok(**await review.approval(state, fields["checkpoint"]), **notes)
        if op == "rules":
            return wire.ok(**await review.rules(state, fields["session"]), **notes)
        if op == "remove-rule":
            return wire.ok(**await review.remove_rule(state, fields["rule"]), **notes)
        if op == "diff":
            return wire.ok(**await review.diff(state, **fields), **notes)
        if op == "revoke":
            return wire.ok(**await machine_admin.revoke(state, fields["machine"]), **notes)
        if op == "rename":
            return wire.ok(
                **await machine_admin.rename(state, fields["machine"], fields["name"]), **notes
            )
        if op.startswith("notify-"):
            from . import notify_actions

            return wire.ok(**await notify_actions.run(state, op, fields), **notes)
        raise OperationFailed("bad-request", f"op {op!r} is not handled")  # pragma: no cover

    async def _wait_first(self, event: asyncio.Event) -> None:
        """Right after the agent started, wait (bounded) for its first connection or
        sync, so the first command does not answer from a cache it has not refreshed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_SYNC_WAIT):
                await event.wait()

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        fields: dict[str, Any],
        *,
        follow: bool,
        notes: dict[str, Any],
    ) -> bytes:
        assert self.state is not None

        async def send(kind: str, seq: int, payload: Any) -> None:
            if kind == "output":
                stream, data = payload
                for start in range(0, max(len(data), 1), wire.MAX_OUTPUT_ITEM):
                    chunk = data[start : start + wire.MAX_OUTPUT_ITEM]
                    writer.write(wire.output_item(seq, stream, chunk))
            elif kind == "status":
                assert isinstance(payload, SessionStatusChanged)
                item = wire.status_item(seq, payload.status, payload.exit_code, payload.detail)
                writer.write(item)
            else:
                writer.write(wire.notice_item(str(payload)))
            await writer.drain()  # a slow reader slows its own stream, nobody else's

        row = await self.state.stream_session(
            fields["session"], send, follow=follow, after=fields["after"]
        )
        reason = await self.state.ending_reason(row)
        return wire.ok(
            session=row.id, status=row.status, exit_code=row.exit_code, reason=reason, **notes
        )

    async def _artifacts(self, session: str) -> dict[str, Any]:
        assert self.state is not None
        names = {m.key: m.name for m in await self.state.store.machines()}
        try:
            return await list_artifacts(self.state.cache, names, session)
        except FileNotFoundError:
            raise OperationFailed(
                "not-found", f"no session {session!r} known here", "see `starmux sessions`"
            ) from None

    async def _get(
        self, writer: asyncio.StreamWriter, fields: dict[str, Any], notes: dict[str, Any]
    ) -> bytes:
        """Fetch an artifact into ``output``, streaming progress items."""
        state = self.state
        assert state is not None
        found = await find_artifact(state.cache, fields["artifact"])
        if found is None:
            raise OperationFailed(
                "not-found",
                f"no artifact {fields['artifact']!r} known here",
                "see `starmux artifacts SESSION`",
            )
        machine, _, artifact = found
        names = {m.key: m.name for m in await state.store.machines()}
        if machine not in names:
            raise OperationFailed("refused", "the machine of this artifact was revoked")
        try:
            dest = destination(fields["output"], artifact.name, force=fields["force"])
        except FileExistsError as exc:
            raise OperationFailed(
                "refused", f"{exc} exists", "add --force to replace it, or give -o another path"
            ) from None
        if state.controller is None or not state.controller.is_online(machine):
            raise OperationFailed(
                "unavailable",
                f"{names[machine]} is not online",
                "fetch it when `starmux machines` shows it online",
            )
        try:
            result = await fetch(state.transfers, machine, artifact, dest, _progress_to(writer))
        except StarmuxError as exc:
            raise OperationFailed("refused", exc.message, exc.hint or "") from exc
        return wire.ok(**fetched_json(result, artifact), **notes)

    async def _release_link(self, writer: asyncio.StreamWriter) -> bytes:
        """Give the relay connection up until this request's connection closes (the
        command's own link uses the same key), then take it back."""
        self.link_released += 1
        self._link_free.clear()
        self._release.set()
        try:
            while self.state is not None and self.state.controller is not None:
                await self.state.controller_changed.wait()
            writer.write(wire.ok(released=True))
            await writer.drain()
            await asyncio.Event().wait()  # until the command closes (cancels us)
        finally:
            self.link_released -= 1
            if not self.link_released:
                self._release.clear()
                self._link_free.set()
        return b""  # pragma: no cover

    async def _status(self) -> dict[str, Any]:
        assert self.state is not None
        return {
            "pid": os.getpid(),
            "home": str(self.home),
            "started_at": self._started,
            "relay_url": self.state.config.relay_url,
            "relay": await self.state.relay(),
            "machines": await self.state.freshness(),
            "watchers": sum(len(w) for w in self.state.watchers.values()),
        }


def _progress_to(writer: asyncio.StreamWriter) -> Callable[[int, int], None]:
    """A transfer's progress as stream items, a few per second at most."""
    shown = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal shown
        now = time.monotonic()
        if now - shown >= PROGRESS_EVERY or done == total:
            shown = now
            writer.write(wire.progress_item(done, total))

    return progress


def run_agent(home: Path) -> int:
    """``starmux controller start --foreground``: hold the lock, serve until stopped."""
    from starmux.node.process import ProcessLock

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ensure_private_dir(home)
    with ProcessLock(home, AGENT_FILES, argv=sys.argv) as lock:
        agent = ControllerAgent(home)
        event_loop.run(agent.run(on_ready=lambda: lock.update_status(state=AgentState.SERVING)))
    return 0
