"""The daemon's local API and the agent commands, over a real Unix socket.

The server runs in the test's event loop with a real collaborator defined here: a
decision table (title → verdict) where "hold" keeps a checkpoint pending until the
test decides it. Clients are real too: raw asyncio connections for the wire tests,
and ``starmux checkpoint`` / ``starmux cost`` as subprocesses, synchronised on
events the handler sets (never on sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.agent_commands import (
    EXIT_BAD_REPLY,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    format_duration,
    parse_duration,
)
from daemon.local_api import LocalApiServer
from daemon.local_api_protocol import (
    MAX_BODY,
    MAX_LINE,
    MAX_TITLE,
    BadRequest,
    CheckpointOutcome,
    CheckpointRequest,
    CostRequest,
    LocalApiError,
    Ping,
    checkpoint_response,
    parse_request,
)
from starmux.errors import UsageError

SESSION = "s-test-1"
FINGERPRINT = "K7Q2-M4XD-TEST"
TIMEOUT = 30  # seconds for any one subprocess; a hang fails the test instead of the run

# `starmux` with the agent commands mounted, as the lead will in LAZY_COMMANDS;
# errors go through the real starmux.cli.main, the one place exit codes are made.
CLI = """
import sys
from starmux.cli import cli, main
from client.agent_commands import checkpoint_command, cost_command
from client.claude_hook import hook_group
for command in (checkpoint_command, cost_command, hook_group):
    cli.add_command(command)
sys.exit(main())
"""


# --- the collaborator: a daemon reduced to a decision table --------------------------


@dataclass
class Raised:
    id: str
    session: str
    title: str
    body: str
    timeout: float
    default_approve: bool
    key: str | None
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
    ) -> CheckpointOutcome:
        self._known(session)
        if title == "crash":
            raise RuntimeError("a bug in the handler")
        checkpoint_id = self.by_key.get((session, key)) if key else None
        if checkpoint_id is None:
            checkpoint_id = f"c-{len(self.checkpoints) + 1}"
            raised = Raised(
                checkpoint_id,
                session,
                title,
                body,
                timeout,
                default_approve,
                key,
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
    env.update(STARMUX_SESSION=SESSION, STARMUX_API=str(api_path), NO_COLOR="1")
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
    server = LocalApiServer(directory / "api.sock", handler, **options)
    await server.start()
    try:
        yield Api(server.path, handler, server)
    finally:
        await server.close()


@pytest.fixture
def home() -> Iterator[Path]:
    with private_dir() as directory:
        yield directory


@pytest.fixture
async def api(home: Path) -> AsyncIterator[Api]:
    async with serving(home) as running:
        yield running


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
    return {"op": "checkpoint", "session": SESSION, "title": "Deploy?", "timeout": 60} | fields


# --- the protocol core, without sockets ------------------------------------------------


def test_parse_valid_requests() -> None:
    assert parse_request(b'{"op":"ping"}') == Ping()
    assert parse_request(json.dumps(checkpoint()).encode()) == CheckpointRequest(
        SESSION, "Deploy?", "", 60.0, False, None
    )
    full = checkpoint(body="why\n", timeout=1.5, default="approve", key="k-1")
    assert parse_request(json.dumps(full).encode()) == CheckpointRequest(
        SESSION, "Deploy?", "why\n", 1.5, True, "k-1"
    )
    cost = {"op": "cost", "session": SESSION, "input_tokens": 10, "output_tokens": 0, "usd": 0}
    assert parse_request(json.dumps(cost).encode()) == CostRequest(SESSION, 10, 0, 0.0, "")


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
    (b"[" * 100_000, "too-large", "longer than"),
]


@pytest.mark.parametrize(("line", "code", "message"), INVALID)
def test_parse_refuses(line: bytes, code: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(line)
    assert caught.value.code == code
    assert message in caught.value.message


@given(st.binary(max_size=512))
def test_parse_never_raises_anything_else_on_bytes(line: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_request(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
checkpoint_fields = st.fixed_dictionaries(
    {"op": st.sampled_from(["checkpoint", "cost", "ping"])},
    optional={
        name: json_values | st.just(good)
        for name, good in [
            ("session", SESSION),
            ("title", "Deploy?"),
            ("body", "b"),
            ("timeout", 60),
            ("default", "approve"),
            ("key", "k"),
            ("input_tokens", 1),
            ("output_tokens", 2),
            ("usd", 0.5),
            ("note", "n"),
        ]
    },
)


@given(checkpoint_fields)
def test_parse_accepts_only_what_the_grammar_allows(fields: dict[str, Any]) -> None:
    try:
        request = parse_request(json.dumps(fields).encode())
    except BadRequest:
        return
    if isinstance(request, CheckpointRequest):
        assert 1 <= len(request.title) <= MAX_TITLE
        assert 1.0 <= request.timeout <= 86400.0
        assert len(request.body.encode()) <= MAX_BODY
    elif isinstance(request, CostRequest):
        assert request.input_tokens >= 0 and request.output_tokens >= 0 and request.usd >= 0
        assert type(request.input_tokens) is int


def test_an_expiry_answers_with_the_default_that_applied() -> None:
    request = CheckpointRequest(SESSION, "t", "", 60.0, True, None)
    expired = CheckpointOutcome("c-1", "expired", "", "")
    assert checkpoint_response(request, expired)["approved"] is True
    deny_default = CheckpointRequest(SESSION, "t", "", 60.0, False, None)
    assert checkpoint_response(deny_default, expired)["approved"] is False
    denied = CheckpointOutcome("c-1", "denied", "no", FINGERPRINT)
    assert checkpoint_response(request, denied)["approved"] is False
    with pytest.raises(TypeError):
        checkpoint_response(request, CheckpointOutcome("c-1", "maybe", "", ""))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("600", 600),
        ("2.5", 2.5),
        (" 1M ", 60),
        ("0.5m", 30),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "-5", "1e3", "10 m", "1h-5m", "inf", "nan"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(UsageError, match="is not a duration"):
        parse_duration(text)


def test_durations_format_back() -> None:
    assert [format_duration(s) for s in (600, 90, 86400, 5400, 2.5, 0)] == [
        "10m",
        "1m30s",
        "1d",
        "1h30m",
        "2.5s",
        "0s",
    ]


# --- the socket file ------------------------------------------------------------------


async def test_socket_is_private(api: Api) -> None:
    info = os.lstat(api.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()


async def test_close_removes_the_socket(home: Path) -> None:
    async with serving(home) as running:
        assert running.path.exists()
    assert not running.path.exists()


async def test_a_stale_socket_is_replaced(home: Path) -> None:
    left_over = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left_over.bind(str(home / "api.sock"))
    left_over.close()  # the file stays, nobody listens: a daemon that died
    async with serving(home) as running:
        assert (await ask(running.path, {"op": "ping"}))["ok"] is True


async def test_a_live_server_is_not_replaced(api: Api) -> None:
    with pytest.raises(LocalApiError, match="already serving"):
        async with serving(api.path.parent):
            pass
    assert (await ask(api.path, {"op": "ping"}))["ok"] is True


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
async def test_anything_else_at_the_path_is_refused(home: Path, kind: str) -> None:
    path = home / "api.sock"
    if kind == "file":
        path.write_text("precious")
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(home / "elsewhere")
    with pytest.raises(LocalApiError, match="not a socket"):
        async with serving(home):
            pass
    assert path.is_symlink() if kind == "symlink" else path.exists()
    if kind == "file":
        assert path.read_text() == "precious"


async def test_a_directory_others_can_enter_is_refused(home: Path) -> None:
    os.chmod(home, 0o755)
    with pytest.raises(LocalApiError, match="accessible by other users") as caught:
        async with serving(home):
            pass
    assert caught.value.hint == f"run: chmod 700 {home}"
    assert not (home / "api.sock").exists()


async def test_a_path_too_long_for_a_socket_is_refused(home: Path) -> None:
    deep = home / ("d" * 100)
    deep.mkdir(mode=0o700)
    with pytest.raises(LocalApiError, match="too long") as caught:
        async with serving(deep):
            pass
    assert caught.value.hint is not None and "STARMUX_HOME" in caught.value.hint


# --- the wire -------------------------------------------------------------------------


async def test_ping(api: Api) -> None:
    answer = await ask(api.path, {"op": "ping"})
    assert answer["ok"] is True
    assert answer["protocol"] == 1
    assert isinstance(answer["version"], str) and answer["version"]


@pytest.mark.parametrize(("line", "code", "message"), INVALID[:-1])
async def test_invalid_requests_are_answered_and_the_server_keeps_serving(
    api: Api, line: bytes, code: str, message: str
) -> None:
    answer = await ask_raw(api.path, line + b"\n")
    assert answer == {"ok": False, "code": code, "error": answer["error"], "hint": answer["hint"]}
    assert message in answer["error"]
    assert (await ask(api.path, {"op": "ping"}))["ok"] is True
    assert api.handler.checkpoints == {}


async def ask_raw(path: Path, data: bytes) -> dict[str, Any]:
    answer, _ = await exchange(path, data)
    return answer


async def test_an_oversize_line_is_refused_and_the_connection_closed(api: Api) -> None:
    big = json.dumps(checkpoint(body="x" * MAX_LINE)).encode() + b"\n"
    answer, rest = await exchange(api.path, big)
    assert answer["code"] == "too-large"
    assert rest == b""
    assert (await ask(api.path, {"op": "ping"}))["ok"] is True


async def test_a_request_without_newline_is_refused(api: Api) -> None:
    reader, writer = await asyncio.open_unix_connection(str(api.path))
    writer.write(b'{"op": "ping"}')
    writer.write_eof()
    answer = json.loads(await reader.readline())
    writer.close()
    assert answer["code"] == "bad-request" and "newline" in answer["error"]


async def test_a_silent_client_is_dropped_after_the_read_timeout(home: Path) -> None:
    async with serving(home, read_timeout=0.2) as running:
        reader, writer = await asyncio.open_unix_connection(str(running.path))
        async with asyncio.timeout(TIMEOUT):
            answer = json.loads(await reader.readline())
            assert await reader.read() == b""
        writer.close()
    assert answer["code"] == "bad-request" and "read timeout" in answer["error"]


async def test_too_many_connections_are_turned_away(home: Path) -> None:
    async with serving(home, max_connections=1) as running:
        running.handler.table["held"] = "hold"
        reader, writer = await asyncio.open_unix_connection(str(running.path))
        writer.write(json.dumps(checkpoint(title="held")).encode() + b"\n")
        await running.handler.raised.wait()
        assert (await ask(running.path, {"op": "ping"}))["code"] == "busy"
        running.handler.decide("c-1", "approved")
        assert json.loads(await reader.readline())["decision"] == "approved"
        writer.close()
        assert (await ask(running.path, {"op": "ping"}))["ok"] is True


async def test_handler_refusals_and_crashes_become_answers(api: Api) -> None:
    refused = await ask(api.path, checkpoint(session="s-unknown"))
    assert refused == {
        "ok": False,
        "code": "refused",
        "error": "no session s-unknown on this machine",
        "hint": "is the session still running?",
    }
    crashed = await ask(api.path, checkpoint(title="crash"))
    assert crashed["code"] == "internal" and "daemon's log" in crashed["hint"]
    assert (await ask(api.path, {"op": "ping"}))["ok"] is True


async def test_a_checkpoint_over_the_wire(api: Api) -> None:
    api.handler.table["Deploy?"] = "denied"
    answer = await ask(api.path, checkpoint(body="to prod", default="approve", key="k"))
    assert answer == {
        "ok": True,
        "checkpoint": "c-1",
        "decision": "denied",
        "approved": False,
        "default": "approve",
        "reason": "denied by the table",
        "decided_by": FINGERPRINT,
    }
    raised = api.handler.checkpoints["c-1"]
    assert (raised.body, raised.timeout, raised.default_approve, raised.key) == (
        "to prod",
        60.0,
        True,
        "k",
    )


async def test_a_client_leaving_cancels_only_its_wait(api: Api) -> None:
    api.handler.fallback = "hold"
    _, writer = await asyncio.open_unix_connection(str(api.path))
    writer.write(json.dumps(checkpoint(key="retry-me")).encode() + b"\n")
    await api.handler.raised.wait()
    writer.close()
    await api.handler.wait_cancelled.wait()
    assert not api.handler.checkpoints["c-1"].decision.done()  # still pending
    api.handler.decide("c-1", "approved", "go")
    again = await ask(api.path, checkpoint(key="retry-me"))
    assert (again["checkpoint"], again["decision"]) == ("c-1", "approved")
    assert list(api.handler.checkpoints) == ["c-1"]


async def test_closing_the_server_cancels_waits(home: Path) -> None:
    async with serving(home) as running:
        running.handler.fallback = "hold"
        reader, writer = await asyncio.open_unix_connection(str(running.path))
        writer.write(json.dumps(checkpoint()).encode() + b"\n")
        await running.handler.raised.wait()
    assert running.handler.wait_cancelled.is_set()
    assert await reader.read() == b""  # closed without an answer
    writer.close()


async def test_cost_over_the_wire(api: Api) -> None:
    request = {
        "op": "cost",
        "session": SESSION,
        "input_tokens": 1200,
        "output_tokens": 300,
        "usd": 0.042,
        "note": "claude-sonnet",
    }
    assert await ask(api.path, request) == {"ok": True}
    assert api.handler.costs == [
        {"input_tokens": 1200, "output_tokens": 300, "usd": 0.042, "note": "claude-sonnet"}
    ]


# --- the commands, as processes -------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "code", "text"),
    [
        ("approved", 0, f"checkpoint c-1: approved by {FINGERPRINT}: approved by the table\n"),
        ("denied", 1, f"checkpoint c-1: denied by {FINGERPRINT}: denied by the table\n"),
        ("expired", 2, "checkpoint c-1: expired, nobody decided in time; default applied: deny\n"),
    ],
)
async def test_checkpoint_exit_status_is_the_answer(
    api: Api, verdict: str, code: int, text: str
) -> None:
    api.handler.fallback = verdict
    result = await starmux(["checkpoint", "Deploy to prod?", "--timeout", "10m"], api.env())
    assert (result.code, result.out, result.err) == (code, text, "")
    raised = api.handler.checkpoints["c-1"]
    assert (raised.session, raised.title, raised.timeout, raised.default_approve) == (
        SESSION,
        "Deploy to prod?",
        600.0,
        False,
    )


async def test_expired_with_default_approve_still_exits_2_and_says_so(api: Api) -> None:
    api.handler.fallback = "expired"
    result = await starmux(
        ["checkpoint", "Deploy?", "--default", "approve", "--json", "--timeout", "90s"], api.env()
    )
    assert result.code == 2, result.err
    assert result.json() == {
        "checkpoint": "c-1",
        "decision": "expired",
        "approved": True,
        "default": "approve",
        "reason": "expired by the table",
        "decided_by": "",
    }
    assert api.handler.checkpoints["c-1"].timeout == 90.0


async def test_remote_text_is_escaped(api: Api) -> None:
    api.handler.fallback = "hold"
    process = await spawn(["checkpoint", "Deploy?"], api.env())
    await api.handler.raised.wait()
    api.handler.decide("c-1", "approved", "ok\x1b[2J\r\nforged: line")
    result = await finish(process)
    assert result.code == 0
    assert (
        result.out == f"checkpoint c-1: approved by {FINGERPRINT}: ok\\x1b[2J\\r\\nforged: line\n"
    )


async def test_the_same_key_picks_up_the_same_checkpoint(api: Api) -> None:
    api.handler.fallback = "hold"
    args = ["checkpoint", "Deploy?", "--key", "deploy-42", "--json"]
    first = await spawn(args, api.env())
    await api.handler.raised.wait()
    first.kill()  # the agent died while waiting (or the hook was killed)
    await finish(first)
    await api.handler.wait_cancelled.wait()
    api.handler.raised.clear()
    second = await spawn(args, api.env())
    await api.handler.raised.wait()
    api.handler.decide("c-1", "approved", "go")
    result = await finish(second)
    assert result.code == 0, result.err
    assert result.json()["checkpoint"] == "c-1"
    assert list(api.handler.checkpoints) == ["c-1"]


async def test_body_from_stdin(api: Api) -> None:
    body = "kubectl apply -f prod.yaml\n\ndiff:\n+ replicas: 3\n"
    result = await starmux(["checkpoint", "Deploy?", "--body", "-"], api.env(), body.encode())
    assert result.code == 0, result.err
    assert api.handler.checkpoints["c-1"].body == body


async def test_outside_a_session(api: Api) -> None:
    env = api.env()
    del env["STARMUX_SESSION"], env["STARMUX_API"]
    result = await starmux(["checkpoint", "Deploy?"], env)
    assert result.code == EXIT_USAGE == 64
    assert result.out == ""
    assert result.err == (
        "error: not inside a starmux session (STARMUX_SESSION and STARMUX_API not set)\n"
        "hint: run this from a command started by `starmux run`; the daemon sets "
        "STARMUX_SESSION and STARMUX_API for it\n"
    )
    assert api.handler.checkpoints == {}


async def test_no_daemon(home: Path, api: Api) -> None:
    result = await starmux(["checkpoint", "Deploy?"], api.env(STARMUX_API=str(home / "gone")))
    assert result.code == EXIT_UNREACHABLE == 4
    assert result.err.startswith(
        f"error: the starmux daemon is not reachable (no socket at {home / 'gone'})\n"
        "hint: is it running? check with `starmux daemon status`"
    )


async def test_a_socket_nobody_listens_on(home: Path, api: Api) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(home / "dead.sock"))
    dead.close()
    result = await starmux(["cost", "--usd", "1"], api.env(STARMUX_API=str(home / "dead.sock")))
    assert result.code == EXIT_UNREACHABLE
    assert "nobody listening" in result.err


async def test_the_daemon_refuses(api: Api) -> None:
    result = await starmux(["checkpoint", "Deploy?"], api.env(STARMUX_SESSION="s-unknown"))
    assert result.code == EXIT_REFUSED == 3
    assert result.err == (
        "error: no session s-unknown on this machine\nhint: is the session still running?\n"
    )


GOOD_ANSWER = {
    "ok": True,
    "checkpoint": "c-1",
    "decision": "approved",
    "approved": True,
    "default": "deny",
    "reason": "",
    "decided_by": FINGERPRINT,
}


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"nonsense\n", "the daemon's answer is not JSON"),
        (b"[" * 50_000 + b"\n", "the daemon's answer is not JSON"),
        (b'{"decision": "approved"}\n', "not a protocol object"),
        (b'{"ok": true, "decision": "perhaps"}\n', "a checkpoint lacks fields"),
        (json.dumps(GOOD_ANSWER | {"decision": "perhaps"}).encode() + b"\n", "unknown decision"),
        (json.dumps(GOOD_ANSWER | {"approved": False}).encode() + b"\n", "contradicts itself"),
        (json.dumps(GOOD_ANSWER | {"decision": "denied"}).encode() + b"\n", "contradicts itself"),
        (b"x" * (2 * 1024 * 1024), "too large"),
    ],
)
async def test_a_reply_that_breaks_the_protocol(home: Path, reply: bytes, message: str) -> None:
    async def odd_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(reply)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(odd_daemon, str(home / "odd.sock"))
    async with server:
        result = await starmux(["checkpoint", "Deploy?"], agent_env(home / "odd.sock"))
    assert result.code == EXIT_BAD_REPLY == 5, result.err
    assert message in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["checkpoint"], "Missing argument 'TITLE'"),
        (["checkpoint", "t", "--timeout", "soon"], "'soon' is not a duration"),
        (["checkpoint", "t", "--timeout", "0s"], "out of range"),
        (["checkpoint", "t", "--timeout", "2d"], "out of range"),
        (["checkpoint", "t", "--default", "maybe"], "'maybe' is not one of"),
        (["checkpoint", "x" * (MAX_TITLE + 1)], "title must be 1-200 characters"),
        (["checkpoint", "two\nlines"], "one line"),
        (["checkpoint", "t", "--key", "a b"], "key must be"),
        (["checkpoint", "t", "--nope"], "No such option"),
        (["cost", "--usd", "-1"], "--usd"),
        (["cost", "--usd", "nan"], "must be a number"),
        (["cost", "--input-tokens", "1.5"], "--input-tokens"),
    ],
)
async def test_usage_errors_exit_64(api: Api, args: list[str], message: str) -> None:
    result = await starmux(args, api.env())
    assert result.code == EXIT_USAGE, result.err
    assert message in result.err
    assert api.handler.checkpoints == {} and api.handler.costs == []


async def test_a_body_over_the_limit_is_a_usage_error(api: Api) -> None:
    result = await starmux(["checkpoint", "t", "--body", "-"], api.env(), b"x" * (MAX_BODY + 1))
    assert result.code == EXIT_USAGE
    assert f"larger than {MAX_BODY} bytes" in result.err


async def test_cost(api: Api) -> None:
    args = [
        "cost",
        "--input-tokens",
        "1200",
        "--output-tokens",
        "300",
        "--usd",
        "0.042",
        "--note",
        "claude-sonnet",
    ]
    result = await starmux(args, api.env())
    assert (result.code, result.out, result.err) == (0, "", "")
    assert api.handler.costs == [
        {"input_tokens": 1200, "output_tokens": 300, "usd": 0.042, "note": "claude-sonnet"}
    ]
