"""``starmux checkpoint`` and ``starmux cost`` as processes, against the daemon's local
API on a real Unix socket with a decision-table handler (tests/unit/local_api_support.py);
synchronised on events the handler sets, never on sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path

import pytest

from starmux.daemon.agent_commands import (
    EXIT_BAD_REPLY,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from starmux.local_api import (
    MAX_BODY,
    MAX_TITLE,
)

from .local_api_support import (
    FINGERPRINT,
    SESSION,
    Api,
    agent_env,
    finish,
    spawn,
    starmux,
)

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


async def test_a_command_or_diff_preview(api: Api) -> None:
    result = await starmux(["checkpoint", "Deploy?", "--command", "make deploy"], api.env())
    assert result.code == 0, result.err
    command = api.handler.checkpoints["c-1"].preview
    assert command is not None and (command.type, command.tool, command.text) == (
        "command",
        "Bash",
        "make deploy",
    )
    diff = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-1\n+2\n"
    result = await starmux(["checkpoint", "Ship?", "--diff", "-"], api.env(), diff.encode())
    assert result.code == 0, result.err
    shipped = api.handler.checkpoints["c-2"].preview
    assert shipped is not None and (shipped.type, shipped.text) == ("diff", diff)
    both = await starmux(["checkpoint", "?", "--command", "x", "--diff", "-"], api.env())
    assert both.code == 64 and "not both" in both.err


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
