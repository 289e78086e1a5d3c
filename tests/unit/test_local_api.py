"""The daemon's local API over a real Unix socket: the socket file and the wire.

The server runs in the test's event loop with a real collaborator defined here: a
decision table (title → verdict) where "hold" keeps a checkpoint pending until the
test decides it. Clients are real too: raw asyncio connections for the wire tests,
and ``starmux checkpoint`` / ``starmux cost`` as subprocesses, synchronised on
events the handler sets (never on sleeps).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from starmux.local_api import (
    MAX_LINE,
    LocalApiError,
)

from .local_api_support import (
    FINGERPRINT,
    INVALID,
    SESSION,
    TIMEOUT,
    TOKEN,
    Api,
    ask,
    checkpoint,
    exchange,
    serving,
)

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
        "token": TOKEN,
        "input_tokens": 1200,
        "output_tokens": 300,
        "usd": 0.042,
        "note": "claude-sonnet",
    }
    assert await ask(api.path, request) == {"ok": True}
    assert api.handler.costs == [
        {"input_tokens": 1200, "output_tokens": 300, "usd": 0.042, "note": "claude-sonnet"}
    ]
