"""Machines whose output outruns their controller (issue 20). The relay cannot push
back on the machines: it closes a receiver whose queue passes its bound (4011). With
live-acks each machine keeps what it pushed within the window its controller gave
(``starmux/live_window.py``) and the rest waits in its log for the controller's
requests, so a stalled controller is never closed and still gets every byte."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from starmux.client.agent_process import read_status

from ..timeouts import poll
from .daemon_process import DaemonProcess
from .fleet import Fleet
from .relay_process import RelayProcess

MACHINES = 3
LINES = 60_000  # 100 bytes each: 6 MB a machine, 18 MB in all (the relay holds 4 MiB)
SLOW_CONSUMER = 'starmux_relay_drops_total{reason="slow-consumer"}'


def printer(gate: Path, done: Path) -> list[str]:
    """Waits for ``gate``, prints :data:`LINES` numbered lines as fast as it can, then
    writes ``done``."""
    code = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        f"for i in range({LINES}): sys.stdout.write(f'{{i:08d}} ' + 'x' * 91 + '\\n')\n"
        "sys.stdout.flush()\n"
        f"open({str(done)!r}, 'w').close()\n"
    )
    return [sys.executable, "-c", code]


def expected() -> bytes:
    return b"".join(f"{i:08d} ".encode() + b"x" * 91 + b"\n" for i in range(LINES))


def relay_metric(relay: RelayProcess, name: str) -> float:
    with urllib.request.urlopen(relay.http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def logged_all(machine: Path, session: str) -> bool:
    """Whether the machine's own log holds the session's end (its output is before it)."""
    with sqlite3.connect(machine / "daemon.sqlite3") as db:
        row = db.execute("SELECT status FROM sessions WHERE id = ?", (session,)).fetchone()
    return row is not None and row[0] == "succeeded"


@pytest.fixture
def stopped_agent(tmp_path: Path) -> Iterator[list[int]]:
    """Pids this test stopped: continued after it whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.mark.timeout(180)
def test_a_stalled_controller_is_not_disconnected_and_gets_everything(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess], stopped_agent: list[int]
) -> None:
    fleet = Fleet(tmp_path, relay, daemons)
    gate = tmp_path / "gate"
    sessions: dict[str, str] = {}
    for n in range(MACHINES):
        name = f"box-{n}"
        fleet.start(name)
        argv = printer(gate, tmp_path / f"done-{n}")
        reply = json.loads(
            fleet.cli("run", "--json", "--machine", name, "--cwd", str(fleet.workdir), "--", *argv)
        )
        assert reply["ok"] is True, reply
        sessions[name] = str(reply["session"])
    status = read_status(fleet.controller)
    assert status is not None and status.alive and status.pid is not None
    assert relay_metric(relay, SLOW_CONSUMER) == 0

    # The controller stops reading while every machine prints 6 MB.
    os.kill(status.pid, signal.SIGSTOP)
    stopped_agent.append(status.pid)
    gate.touch()
    for name, session in sessions.items():
        machine = tmp_path / name
        poll(
            lambda m=machine, s=session: logged_all(m, s) or None,  # type: ignore[misc]
            within=90,
            what=f"{name}'s session to end in its own log",
        )
    os.kill(status.pid, signal.SIGCONT)

    want = expected()
    for name, session in sessions.items():
        # (`watch` ends with the session: everything before its end has been applied)
        logs = fleet.cli("watch", session).encode()
        assert logs == want, f"{name}: {len(logs)} bytes of {len(want)}"
    # Every machine held back once its window was full: the relay never had to drop
    # the controller for falling behind.
    assert relay_metric(relay, SLOW_CONSUMER) == 0
