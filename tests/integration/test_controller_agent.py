"""The controller agent through real processes: a relay, a daemon, the agent and many
controller commands at once (issue 13: two watches and a loop of sessions, approvals
and approve knocked each other off the relay and lost lines)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from starmux.client.agent_process import read_status
from starmux.home import load_node_keys
from starmux.identity import Role

from .cluster import Paired, pair, python
from .daemon_process import DaemonProcess, run_cli, starmux_command
from .node import RelayNode
from .relay_process import RelayProcess
from .watcher import Watcher

STEPS = 4
LINES_PER_STEP = 25
#: The issue's bound for an approve: the answer through the agent (delivered, signed,
#: verified and acked by the machine) within 1 s. Measured beyond what starting a
#: Python process costs on this machine at this moment (seconds on a loaded CI box).
APPROVE_BOUND = 1.0


def python_start_time() -> float:
    """The wall time of a trivial starmux command right now: the floor of any command."""
    started = time.monotonic()
    subprocess.run(starmux_command("--version"), check=True, capture_output=True)
    return time.monotonic() - started


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def stepper(steps: int) -> list[str]:
    """A session that prints lines, then waits on a checkpoint, ``steps`` times."""
    return python(
        "import subprocess, sys\n"
        f"for i in range({steps}):\n"
        f"    for j in range({LINES_PER_STEP}): print(f'line {{i}}-{{j}}', flush=True)\n"
        "    r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'checkpoint',"
        " f'step {i}', '--timeout', '120'], capture_output=True)\n"
        "    print(f'step {i} exit {r.returncode}', flush=True)\n"
    )


def expected_output(steps: int) -> list[bytes]:
    lines = []
    for i in range(steps):
        lines += [f"line {i}-{j}\n".encode() for j in range(LINES_PER_STEP)]
        lines.append(f"step {i} exit 0\n".encode())
    return lines


def approve_all_while_watched(paired: Paired, steps: int) -> list[float]:
    """Run the stepper with two watches; approve every step from a loop that also
    lists sessions and approvals. Returns each approve's wall-clock time."""
    session = paired.run(*stepper(steps), title="stepper")
    watchers = [Watcher(paired.controller, session), Watcher(paired.controller, session)]
    approved: set[str] = set()
    timings: list[float] = []
    deadline = time.monotonic() + 60
    try:
        while len(approved) < steps:
            assert time.monotonic() < deadline, f"approved {len(approved)} of {steps} steps"
            rows = paired.json("sessions")
            assert isinstance(rows, list) and any(r["id"] == session for r in rows)
            pending = paired.json("approvals")
            assert isinstance(pending, list)
            for row in pending:
                if row["session"] != session or row["id"] in approved:
                    continue
                floor = python_start_time()
                started = time.monotonic()
                result = run_cli(paired.controller, "approve", str(row["id"]))
                timings.append(time.monotonic() - started - floor)
                assert result.returncode == 0, result.stderr
                assert result.stdout.startswith("approved "), result.stdout
                approved.add(str(row["id"]))
        for watcher in watchers:
            assert watcher.finish(timeout=60) == 0
    finally:
        for watcher in watchers:
            if watcher.process.poll() is None:
                watcher.kill()
    want = expected_output(steps)
    for watcher in watchers:
        assert watcher.lines == want, b"".join(watcher.errors).decode(errors="replace")
        assert b"Traceback" not in b"".join(watcher.errors)
    return timings


@pytest.mark.timeout(120)
def test_two_watches_and_a_command_loop_are_each_exact(paired: Paired) -> None:
    timings = approve_all_while_watched(paired, STEPS)
    print(f"\napprove, beyond starting Python: {', '.join(f'{t:.2f}' for t in timings)} s")
    assert len(timings) == STEPS
    assert max(timings) < APPROVE_BOUND, timings
    # One agent served every command: it holds the home's lock.
    status = read_status(paired.controller)
    assert status is not None and status.alive and status.state == "serving"


def test_agent_is_started_on_demand_found_and_stopped(paired: Paired) -> None:
    first = run_cli(paired.controller, "sessions", "--json")
    assert first.returncode == 0, first.stderr
    status = run_cli(paired.controller, "controller", "status", "--json")
    record = json.loads(status.stdout)
    assert record["alive"] is True and record["agent"]["relay"]["connected"] is True
    pid = record["pid"]
    # The next command finds the same agent.
    assert run_cli(paired.controller, "machines").returncode == 0
    assert (
        json.loads(run_cli(paired.controller, "controller", "status", "--json").stdout)["pid"]
        == pid
    )
    stopped = run_cli(paired.controller, "controller", "stop")
    assert stopped.stdout.strip() == "controller agent stopped"
    gone = run_cli(paired.controller, "controller", "status")
    assert gone.returncode == 3 and "not running" in gone.stdout
    # ...and the next command starts a new one.
    assert run_cli(paired.controller, "sessions").returncode == 0
    again = json.loads(run_cli(paired.controller, "controller", "status", "--json").stdout)
    assert again["alive"] is True and again["pid"] != pid


def test_controller_start_detach_single_instance_and_install(
    paired: Paired, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = run_cli(paired.controller, "controller", "start", "--detach")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("controller agent started (pid ")
    again = run_cli(paired.controller, "controller", "start", "--detach")
    assert again.returncode == 2 and "already running" in again.stderr
    assert "starmux controller stop" in again.stderr
    assert (paired.controller / "controller.sock").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    installed = run_cli(paired.controller, "controller", "install")
    assert installed.returncode == 0, installed.stderr
    unit = (tmp_path / "config" / "systemd" / "user" / "starmux-controller.service").read_text()
    assert (
        "controller start --foreground" in unit and "Description=starmux controller agent" in unit
    )
    assert "Environment=PATH=" in unit


def test_commands_before_init_say_so_and_create_nothing(tmp_path: Path) -> None:
    home = tmp_path / "nothing-here"
    for args in (["sessions"], ["watch", "s-1"], ["logs", "s-1"], ["cancel", "s-1"]):
        result = run_cli(home, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "no controller in" in result.stderr and "starmux init" in result.stderr
    assert not home.exists() or not any(home.iterdir())


@pytest.mark.timeout(90)
def test_revoke_ends_the_machines_sessions_here_and_watch_says_so(paired: Paired) -> None:
    session = paired.run(*python("import time\nprint('up', flush=True)\ntime.sleep(120)"))
    watcher = Watcher(paired.controller, session)
    watcher.wait_lines(1)
    revoked = run_cli(paired.controller, "revoke", "gpu-box", "--yes")
    assert revoked.returncode == 0, revoked.stderr
    assert "its unfinished sessions are marked `revoked`" in revoked.stdout
    assert watcher.finish(timeout=30) == 1
    said = b"".join(watcher.errors).decode()
    assert f"[{session}: revoked: its machine was revoked" in said, said
    row = paired.session(session)
    assert row["status"] == "revoked"
    cancel = run_cli(paired.controller, "cancel", session)
    assert cancel.returncode == 1
    assert "its machine was revoked" in cancel.stderr and "StopIteration" not in cancel.stderr
    watch_again = run_cli(paired.controller, "watch", session)
    assert watch_again.returncode == 1 and "revoked" in watch_again.stderr


@pytest.mark.timeout(90)
def test_checkpoints_of_ended_sessions_leave_approvals_and_are_too_late(paired: Paired) -> None:
    session = paired.run(*stepper(1), title="ends")
    deadline = time.monotonic() + 30
    pending: list[dict[str, object]] = []
    while not pending:
        assert time.monotonic() < deadline, "the checkpoint never showed up"
        rows = paired.json("approvals")
        assert isinstance(rows, list)
        pending = [r for r in rows if r["session"] == session]
    checkpoint = str(pending[0]["id"])
    assert run_cli(paired.controller, "cancel", session).returncode == 0
    deadline = time.monotonic() + 30
    while paired.session(session)["status"] != "cancelled":
        assert time.monotonic() < deadline, "the session never ended"
    listed = paired.json("approvals")
    assert isinstance(listed, list) and all(r["id"] != checkpoint for r in listed)
    late = run_cli(paired.controller, "approve", checkpoint)
    assert late.returncode == 1, late.stdout
    assert "too late: the session ended (cancelled)" in late.stderr
    assert "approved" not in late.stdout


def _until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_a_queued_command_refused_on_delivery_is_shown(paired: Paired) -> None:
    paired.daemon.stop()

    def offline() -> bool:
        machines = paired.json("machines")
        assert isinstance(machines, list)
        return not machines[0]["online"]

    _until(offline, "the machine never went offline")
    queued = run_cli(paired.controller, "run", "--machine", "gpu-box", "--cwd", "/", "--", "true")
    assert queued.returncode == 0 and queued.stdout.startswith("queued: gpu-box"), queued.stdout
    mark = len(paired.daemon.output)
    paired.daemon.start()
    paired.daemon.wait_for("connected to", after=mark)

    def refused() -> bool:
        rows = paired.json("outbox")
        assert isinstance(rows, list)
        return any(r["state"] == "refused" for r in rows)

    _until(refused, "the refusal never reached the outbox")
    shown = run_cli(paired.controller, "outbox")
    assert "REFUSED" in shown.stdout and "allow-root" in shown.stdout, shown.stdout
    first = run_cli(paired.controller, "sessions")
    assert "note: a queued run for gpu-box was refused: refusing to start" in first.stderr, (
        first.stderr
    )
    second = run_cli(paired.controller, "sessions")
    assert "was refused" not in second.stderr  # said once


def test_a_command_that_cannot_start_says_why_everywhere(paired: Paired) -> None:
    session = paired.run("no-such-command-here")
    watched = run_cli(paired.controller, "watch", session)
    assert watched.returncode == 1
    assert "could not start" in watched.stderr and "not found" in watched.stderr
    logs = run_cli(paired.controller, "logs", session)
    assert "failed: could not start" in logs.stderr and "not found" in logs.stderr
    listed = run_cli(paired.controller, "sessions")
    assert "could not start" in listed.stdout and "not found" in listed.stdout


@pytest.mark.timeout(90)
def test_watch_resumes_exactly_when_the_agent_is_restarted(paired: Paired, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    session = paired.run(
        *python(
            "import os, time\nfor i in range(50): print(f'before {i}', flush=True)\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
            "for i in range(50): print(f'after {i}', flush=True)\n"
        )
    )
    watcher = Watcher(paired.controller, session)
    watcher.wait_lines(50)
    assert run_cli(paired.controller, "controller", "stop").returncode == 0
    gate.touch()
    assert watcher.finish(timeout=60) == 0, b"".join(watcher.errors).decode(errors="replace")
    want = [f"before {i}\n".encode() for i in range(50)] + [
        f"after {i}\n".encode() for i in range(50)
    ]
    assert watcher.lines == want
    assert b"resuming" in b"".join(watcher.errors)


def test_machines_rename(paired: Paired) -> None:
    renamed = run_cli(paired.controller, "machines", "rename", "gpu-box", "trainer")
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout.startswith("renamed gpu-box (")
    machines = paired.json("machines")
    assert isinstance(machines, list) and [m["name"] for m in machines] == ["trainer"]
    listed = run_cli(paired.controller, "machines")
    assert listed.stdout.startswith("trainer")


def test_the_agent_does_not_fight_another_holder_of_its_key(paired: Paired) -> None:
    """A second connection with the device's key (another process, a copied home)
    replaces the agent's: the agent stays off instead of replacing it back at once
    (both would close each other in a loop), and `controller status` says why."""
    assert run_cli(paired.controller, "sessions").returncode == 0  # the agent is connected

    async def hold_the_key() -> None:
        keys = load_node_keys(paired.controller / "controller.key")
        other = RelayNode(Role.CONTROLLER, "copy", keys=keys)
        await other.connect(paired.relay.url)
        try:
            # Before the fix the agent was back within its 0.5 s backoff, closing this.
            with pytest.raises(TimeoutError):
                await other.expect_close(timeout=3.0)
        finally:
            await other.close()

    asyncio.run(hold_the_key())
    relay = json.loads(run_cli(paired.controller, "controller", "status", "--json").stdout)
    relay = relay["agent"]["relay"]
    assert relay["connected"] is False
    assert "replaced" in relay["error"] and "its own" in relay["hint"]
