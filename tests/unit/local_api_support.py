"""Shared by the local API tests: a daemon reduced to a decision table, a server on a
real Unix socket, raw clients, and ``starmux checkpoint`` / ``cost`` as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starmux.checkpoint_preview import CheckpointPreview
from starmux.daemon.local_api import LocalApiServer
from starmux.errors import UsageError
from starmux.local_api import (
    MAX_BODY,
    MAX_LINE,
    CheckpointOutcome,
    CheckpointRequest,
)

SESSION = "s-test-1"
TOKEN = "t0ken-of-the-test-session-0123456789abcdef"
FINGERPRINT = "K7Q2-M4XD-TEST"
TIMEOUT = 30  # seconds for any one subprocess; a hang fails the test instead of the run

# `starmux` with the agent commands mounted, as the lead will in LAZY_COMMANDS;
# errors go through the real starmux.cli.main, the one place exit codes are made.
CLI = """
import sys
from starmux.cli import cli, main
from starmux.daemon.agent_commands import checkpoint_command, cost_command
from starmux.daemon.claude_hook import hook_group
for command in (checkpoint_command, cost_command, hook_group):
    cli.add_command(command)
sys.exit(main())
"""


# --- the collaborator: a daemon reduced to a decision table --------------------------


@dataclass(frozen=True)
class Raised(CheckpointRequest):
    """A checkpoint request as the handler got it, with its id and pending decision."""

    id: str
    decision: asyncio.Future[CheckpointOutcome]


class TableHandler:
    """Decides by title from ``table`` (else ``fallback``); ``"hold"`` waits for the test."""

    def __init__(self) -> None:
        self.sessions = {SESSION}
        self.table: dict[str, str] = {}
        self.fallback = "approved"
        self.checkpoints: dict[str, Raised] = {}
        self.by_key: dict[tuple[str, str], str] = {}
        self.costs: list[dict[str, Any]] = []
        self.raised = asyncio.Event()
        self.wait_cancelled = asyncio.Event()

    def _known(self, session: str) -> None:
        if session not in self.sessions:
            raise UsageError(
                f"no session {session} on this machine", hint="is the session still running?"
            )

    async def checkpoint(
        self,
        *,
        session: str,
        title: str,
        body: str,
        timeout: float,
        default_approve: bool,
        key: str | None,
        preview: CheckpointPreview | None = None,
    ) -> CheckpointOutcome:
        self._known(session)
        if title == "crash":
            raise RuntimeError("a bug in the handler")
        checkpoint_id = self.by_key.get((session, key)) if key else None
        if checkpoint_id is None:
            checkpoint_id = f"c-{len(self.checkpoints) + 1}"
            raised = Raised(
                session,
                TOKEN,
                title,
                body,
                timeout,
                default_approve,
                key,
                preview,
                checkpoint_id,
                asyncio.get_running_loop().create_future(),
            )
            self.checkpoints[checkpoint_id] = raised
            if key:
                self.by_key[(session, key)] = checkpoint_id
            verdict = self.table.get(title, self.fallback)
            if verdict != "hold":
                self.decide(checkpoint_id, verdict, f"{verdict} by the table")
        self.raised.set()
        try:
            return await asyncio.shield(self.checkpoints[checkpoint_id].decision)
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise

    def decide(self, checkpoint_id: str, verdict: str, reason: str = "") -> None:
        by = "" if verdict == "expired" else FINGERPRINT
        self.checkpoints[checkpoint_id].decision.set_result(
            CheckpointOutcome(checkpoint_id, verdict, reason, by)
        )

    async def cost(
        self, *, session: str, input_tokens: int, output_tokens: int, usd: float, note: str
    ) -> None:
        self._known(session)
        self.costs.append(
            {"input_tokens": input_tokens, "output_tokens": output_tokens, "usd": usd, "note": note}
        )


# --- the server, clients and processes -------------------------------------------------


def agent_env(api_path: Path, **overrides: str) -> dict[str, str]:
    """What the daemon gives a session's processes (plus NO_COLOR for exact stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARMUX_")}
    env.update(
        STARMUX_SESSION=SESSION,
        STARMUX_API=str(api_path),
        STARMUX_SESSION_TOKEN=TOKEN,
        NO_COLOR="1",
    )
    env.update(overrides)
    return env


@dataclass
class Api:
    path: Path
    handler: TableHandler
    server: LocalApiServer

    def env(self, **overrides: str) -> dict[str, str]:
        return agent_env(self.path, **overrides)


@contextlib.contextmanager
def private_dir() -> Iterator[Path]:
    """A 0700 directory with a short path (a Unix socket path has at most 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="smx-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(directory: Path, **options: Any) -> AsyncIterator[Api]:
    handler = TableHandler()
    options.setdefault("authorize", lambda session, token: token == TOKEN)
    server = LocalApiServer(directory / "api.sock", handler, **options)
    await server.start()
    try:
        yield Api(server.path, handler, server)
    finally:
        await server.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def spawn(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, stdin: bytes = b"") -> Result:
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate(stdin)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def starmux(args: list[str], env: dict[str, str], stdin: bytes = b"") -> Result:
    return await finish(await spawn(args, env), stdin)


async def exchange(path: Path, data: bytes) -> tuple[dict[str, Any], bytes]:
    """Send raw bytes; return the answer and whatever followed it before EOF."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            line = await reader.readline()
            try:
                rest = await reader.read()
            except ConnectionResetError:  # it closed with our excess unread: no EOF
                rest = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return json.loads(line), rest


async def ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    answer, _ = await exchange(path, json.dumps(request).encode() + b"\n")
    return answer


def checkpoint(**fields: Any) -> dict[str, Any]:
    return {
        "op": "checkpoint",
        "session": SESSION,
        "token": TOKEN,
        "title": "Deploy?",
        "timeout": 60,
    } | fields


#: Lines the server must refuse: (line, error code, words of the message).
INVALID = [
    (b"not json", "bad-request", "not one JSON object"),
    (b"\xff\xfe", "bad-request", "UTF-8"),
    (b"[1, 2]", "bad-request", "JSON object"),
    (b'{"op": 1}', "bad-request", '"op" string'),
    (b'{"op": "launch"}', "unknown-op", "unknown op"),
    (b'{"op": "ping", "op": "ping"}', "bad-request", "twice"),
    (b'{"op": "ping", "extra": 1}', "bad-request", "unknown field"),
    (json.dumps(checkpoint(title=5)).encode(), "bad-request", "title must be a string"),
    (json.dumps(checkpoint(title="")).encode(), "bad-request", "title must be 1-200"),
    (json.dumps(checkpoint(title="x" * 201)).encode(), "bad-request", "title must be 1-200"),
    (json.dumps(checkpoint(title="a\nb")).encode(), "bad-request", "one line"),
    (json.dumps(checkpoint(title="a\u202eb")).encode(), "bad-request", "format characters"),
    (json.dumps(checkpoint(body="x" * (MAX_BODY + 1))).encode(), "bad-request", "body"),
    (json.dumps(checkpoint(body="\0")).encode(), "bad-request", "NUL"),
    (
        b'{"op":"checkpoint","session":"s-test-1","title":"\\ud800","timeout":60}',
        "bad-request",
        "surrogate",
    ),
    (json.dumps(checkpoint(timeout="10m")).encode(), "bad-request", "timeout must be a number"),
    (json.dumps(checkpoint(timeout=True)).encode(), "bad-request", "timeout must be a number"),
    (json.dumps(checkpoint(timeout=0.5)).encode(), "bad-request", "1-86400"),
    (json.dumps(checkpoint(timeout=86401)).encode(), "bad-request", "1-86400"),
    (b'{"op":"checkpoint","session":"s-test-1","title":"t","timeout":NaN}', "bad-request", "NaN"),
    (
        b'{"op":"checkpoint","session":"s-test-1","title":"t","timeout":1e999}',
        "bad-request",
        "finite",
    ),
    (json.dumps(checkpoint(default="maybe")).encode(), "bad-request", "default must be"),
    (json.dumps(checkpoint(key="has space")).encode(), "bad-request", "key must be"),
    (json.dumps(checkpoint(session="../etc")).encode(), "bad-request", "session must be"),
    (
        json.dumps({"op": "checkpoint", "session": SESSION, "title": "t"}).encode(),
        "bad-request",
        "needs the field 'timeout'",
    ),
    (
        b'{"op":"cost","session":"s-test-1","input_tokens":true,"output_tokens":0,"usd":0}',
        "bad-request",
        "input_tokens must be a whole number",
    ),
    (
        b'{"op":"cost","session":"s-test-1","input_tokens":-1,"output_tokens":0,"usd":0}',
        "bad-request",
        "input_tokens must be a whole number",
    ),
    (
        b'{"op":"cost","session":"s-test-1","input_tokens":1.5,"output_tokens":0,"usd":0}',
        "bad-request",
        "input_tokens must be a whole number",
    ),
    (
        b'{"op":"cost","session":"s-test-1","input_tokens":1' + b"0" * 5000 + b',"output_tokens"'
        b':0,"usd":0}',
        "bad-request",
        "not one JSON object",
    ),
    (
        b'{"op":"cost","session":"s-test-1","input_tokens":1,"output_tokens":0,"usd":-0.5}',
        "bad-request",
        "usd must be",
    ),
    (b"[" * (MAX_LINE + 1), "too-large", "longer than"),
]
