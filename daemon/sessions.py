"""Agent sessions on this machine: start, capture, cancel, and account for every one.

Every change is an event in the durable log, written together with the session's
snapshot row in one transaction (``EventLog.append(..., also=...)``), so the log
and the snapshot never disagree. Invariants:

- A session exists in the log (``queued``) *before* its process starts, and the
  command that asked for it is recorded in the same transaction: a command
  delivered twice finds its record and never starts a second process.
- Output is captured in chunks and appended in order per stream; the session's
  final status is appended only after its last output.
- On restart, sessions the previous daemon left non-terminal are marked ``lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack

from starmux.errors import UsageError
from starmux.messages import (
    APP,
    CostReported,
    Output,
    OutputStream,
    SessionCreated,
    SessionStatusChanged,
    StartSession,
)
from starmux.session_state import TERMINAL, Status, transition

from .agent_process import AgentProcess, resolve_session_cwd
from .eventlog import EventLog

log = logging.getLogger("starmux.daemon")

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{4,40}$")
CANCEL_GRACE = 5.0

Statement = tuple[str, Sequence[object]]


def _starmux_dir() -> str | None:
    """The directory of the ``starmux`` this daemon runs from: next to its Python in a
    venv or pipx install (``bin/python`` and ``bin/starmux``), else where it was
    started from as ``starmux``."""
    for candidate in (os.path.dirname(sys.executable), os.path.dirname(sys.argv[0] or "")):
        if candidate and os.access(os.path.join(candidate, "starmux"), os.X_OK):
            return os.path.abspath(candidate)
    return None


#: Found once at start: sessions and hooks call ``starmux checkpoint``; without this a
#: venv install gives them "starmux: command not found" (exit 127).
STARMUX_DIR: Final = _starmux_dir()


def session_path(path: str | None, *, starmux_dir: str | None) -> str:
    """A session's PATH: the daemon's, with the directory of ``starmux`` first if it
    is not on it already."""
    entries = (path if path is not None else os.defpath).split(os.pathsep)
    if starmux_dir is None or starmux_dir in entries:
        return os.pathsep.join(entries)
    return os.pathsep.join([starmux_dir, *entries])


@dataclass
class LiveSession:
    id: str
    status: Status
    process: AgentProcess | None = None
    cancelling: bool = False


def command_record(
    command_id: str, ok: bool, error: str, hint: str, result: str, at: float
) -> Statement:
    """The statement that records a command's outcome (idempotency), for ``also=``."""
    return (
        "INSERT INTO commands (command_id, ok, error, hint, result, at) VALUES (?, ?, ?, ?, ?, ?)",
        (command_id, int(ok), error, hint, result, at),
    )


class SessionManager:
    def __init__(
        self,
        log: EventLog,
        *,
        allowed_roots: Sequence[Path],
        api_socket: Path,
        allowed_env: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        #: env names a controller may set (``daemon start --allow-env``); None: any
        self.allowed_env = allowed_env
        self.allowed_roots = list(allowed_roots)
        self.api_socket = api_socket
        self.clock = clock
        self.sessions: dict[str, LiveSession] = {}
        #: each session's secret for the local API (it lives as long as the daemon:
        #: a session never outlives the daemon that started it)
        self._tokens: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> list[str]:
        """Mark sessions left running by a previous daemon as lost; returns their ids."""
        rows = await self.log.execute_read(
            "SELECT id, status, pid FROM sessions WHERE status NOT IN (?, ?, ?, ?)",
            tuple(s.value for s in TERMINAL),
        )
        lost = []
        for session_id, status, pid in rows:
            _stop_orphan(pid, session_id)
            await self._set_status(
                session_id,
                Status(status),
                Status.LOST,
                None,
                "the daemon restarted and the process was gone",
            )
            lost.append(session_id)
        return lost

    async def status_of(self, session_id: str) -> Status | None:
        live = self.sessions.get(session_id)
        if live is not None:
            return live.status
        rows = await self.log.execute_read(
            "SELECT status FROM sessions WHERE id = ?", (session_id,)
        )
        return Status(rows[0][0]) if rows else None

    async def start(
        self,
        command_id: str,
        request: StartSession,
        *,
        attach: Callable[[Path], Path] | None = None,
    ) -> str:
        """Record and start a session. Raises UsageError (recorded by the caller).

        ``attach(cwd)`` puts the session's attachments in place (returns their folder,
        given to the session as ``STARMUX_ATTACHMENTS``)."""
        if not SESSION_ID.match(request.session):
            raise UsageError("invalid session id")
        if not request.argv:
            raise UsageError("no command given", hint="starmux run --machine M -- COMMAND...")
        if await self.status_of(request.session) is not None:
            raise UsageError(f"session {request.session} already exists")
        cwd = resolve_session_cwd(request.cwd, self.allowed_roots)
        if self.allowed_env is not None:
            refused = sorted(set(request.env) - self.allowed_env)
            if refused:
                # Refused, not dropped: the controller must not believe they were set.
                raise UsageError(
                    f"this machine does not accept the environment variable(s) "
                    f"{', '.join(refused)[:200]} from a controller",
                    hint="it was started with --allow-env; allowed: "
                    + (", ".join(sorted(self.allowed_env)) or "none"),
                )
        attachments = attach(cwd) if attach is not None else None
        now = self.clock()
        created = SessionCreated(request.argv, str(cwd), request.title, request.pty, command_id)
        await self.log.append(
            request.session,
            APP.encode(created),
            at=now,
            also=[
                (
                    "INSERT INTO sessions (id, status, argv, cwd, title, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        request.session,
                        Status.QUEUED.value,
                        msgpack.packb(list(request.argv)),
                        str(cwd),
                        request.title,
                        now,
                        now,
                    ),
                ),
                command_record(command_id, True, "", "", request.session, now),
            ],
        )
        live = LiveSession(request.session, Status.QUEUED)
        self.sessions[request.session] = live
        env = {
            **os.environ,
            **request.env,
            "STARMUX_SESSION": request.session,
            "STARMUX_API": str(self.api_socket),
            "STARMUX_SESSION_TOKEN": self._tokens.setdefault(
                request.session, secrets.token_urlsafe(32)
            ),
        }
        env["PATH"] = session_path(env.get("PATH"), starmux_dir=STARMUX_DIR)
        if attachments is not None:
            env["STARMUX_ATTACHMENTS"] = str(attachments)
        if request.pty:
            env.setdefault("TERM", "xterm-256color")

        async def on_output(stream: str, data: bytes) -> None:
            await self.log.append(
                request.session, APP.encode(Output(OutputStream(stream), data)), at=self.clock()
            )

        try:
            live.process = await AgentProcess.start(
                request.argv, cwd=cwd, env=env, pty=request.pty, on_output=on_output
            )
        except UsageError as exc:
            await self.transition(live, Status.FAILED, None, f"could not start: {exc}")
            return request.session
        await self.log.execute_write(
            [("UPDATE sessions SET pid = ? WHERE id = ?", (live.process.pid, request.session))]
        )
        await self.transition(live, Status.RUNNING, None, f"pid {live.process.pid}")
        task = asyncio.get_running_loop().create_task(self._watch(live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return request.session

    async def _watch(self, live: LiveSession) -> None:
        assert live.process is not None
        try:
            code = await live.process.wait()
        except Exception as exc:  # output could not be recorded: the process was stopped
            log.exception("session %s: output could not be recorded", live.id)
            with contextlib.suppress(Exception):
                await self.transition(
                    live, Status.FAILED, None, f"output could not be recorded: {exc}"
                )
            return
        if live.cancelling:
            final, detail = Status.CANCELLED, "cancelled by a controller"
        elif code == 0:
            final, detail = Status.SUCCEEDED, "exited 0"
        else:
            final, detail = Status.FAILED, f"exited {code}"
        await self.transition(live, final, code, detail)

    async def transition(
        self, live: LiveSession, new: Status, exit_code: int | None, detail: str
    ) -> None:
        old = live.status
        live.status = transition(old, new)
        await self._set_status(live.id, old, new, exit_code, detail)

    async def _set_status(
        self, session_id: str, old: Status, new: Status, exit_code: int | None, detail: str
    ) -> None:
        transition(old, new)
        now = self.clock()
        await self.log.append(
            session_id,
            APP.encode(SessionStatusChanged(new, exit_code, detail)),
            at=now,
            also=[
                (
                    "UPDATE sessions SET status = ?, exit_code = ?, updated_at = ? WHERE id = ?",
                    (new.value, exit_code, now, session_id),
                )
            ],
        )

    def token_matches(self, session_id: str, token: str) -> bool:
        """Is ``token`` this session's local API secret? (constant time)"""
        expected = self._tokens.get(session_id, "")
        return bool(expected) and hmac.compare_digest(expected.encode(), token.encode())

    def live(self, session_id: str) -> LiveSession:
        live = self.sessions.get(session_id)
        if live is None or live.status in TERMINAL:
            raise UsageError(f"session {session_id} is not running on this machine")
        return live

    async def cancel(self, session_id: str) -> None:
        live = self.live(session_id)
        live.cancelling = True
        if live.process is not None:
            await live.process.cancel(grace=CANCEL_GRACE)

    async def send_input(self, session_id: str, data: bytes) -> None:
        live = self.live(session_id)
        if live.process is None:
            raise UsageError(f"session {session_id} has no process yet")
        await live.process.send_input(data)

    async def report_cost(self, session_id: str, cost: CostReported) -> None:
        self.live(session_id)
        await self.log.append(
            session_id,
            APP.encode(cost),
            at=self.clock(),
            also=[
                (
                    "UPDATE sessions SET input_tokens = input_tokens + ?, "
                    "output_tokens = output_tokens + ?, usd = usd + ? WHERE id = ?",
                    (cost.input_tokens, cost.output_tokens, cost.usd, session_id),
                )
            ],
        )

    async def close(self) -> None:
        """Daemon shutdown: stop running sessions and record it.

        Nobody could capture their output or answer their checkpoints after we exit,
        so letting them run on unobserved would be worse than stopping them.
        """
        for live in list(self.sessions.values()):
            if live.status not in TERMINAL and live.process is not None:
                live.cancelling = True
                with contextlib.suppress(Exception):
                    await live.process.cancel(grace=CANCEL_GRACE)
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def _stop_orphan(pid: int | None, session_id: str) -> None:
    """Kill a session process that outlived a crashed daemon, if it is really ours.

    Its output pipes died with the daemon, so nobody can watch it any more; the pid
    is checked against the session id in its environment so a recycled pid of an
    unrelated process is never signalled.
    """
    if not pid:
        return
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return
    if f"STARMUX_SESSION={session_id}".encode() in environ.split(b"\0"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
