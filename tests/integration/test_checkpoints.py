"""Checkpoints through every real part: agent → local API → daemon → relay → controller."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from starmux.client.agent_client import relay_link_released
from starmux.client.cache import Cache
from starmux.client.sessions import live_controller
from starmux.identity import NodeKeys
from starmux.messages import APP, DecideCheckpoint

from ..timeouts import poll
from .cluster import Paired, pair, pending_checkpoint, python
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess
from .watcher import Watcher

DATA = Path(__file__).resolve().parent.parent / "data" / "claude"


def agent(title: str, *extra: str) -> list[str]:
    """A session that raises a checkpoint and reports what it got."""
    args = ["checkpoint", title, "--json", *extra]
    return python(
        "import subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'starmux.cli', *{args!r}],"
        " capture_output=True, text=True)\n"
        "print('exit', r.returncode, r.stdout.strip(), r.stderr.strip(), flush=True)\n"
        "sys.exit(r.returncode)\n"
    )


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def _pending(paired: Paired, *, title: str) -> dict[str, object]:
    return pending_checkpoint(paired.cli, title)


def test_checkpoint_raised_offline_then_approved(paired: Paired) -> None:
    # No controller process runs while the agent raises the checkpoint.
    session = paired.run(*agent("Deploy to prod?", "--timeout", "120"))
    checkpoint = _pending(paired, title="Deploy to prod?")
    assert checkpoint["session"] == session and checkpoint["default"] == "deny"
    row = paired.session(session)
    assert row["status"] == "waiting_approval"

    approved = run_cli(paired.controller, "approve", str(checkpoint["id"]), "--reason", "ok")
    assert approved.returncode == 0, approved.stderr
    watcher = Watcher(paired.controller, session)
    assert watcher.finish() == 0
    report = b"".join(watcher.lines).decode()
    assert report.startswith("exit 0 ")
    assert json.loads(report.split(" ", 2)[2].split("\n")[0])["decision"] == "approved"
    assert paired.session(session)["status"] == "succeeded"

    # A second answer is too late, and says what happened first.
    again = run_cli(paired.controller, "deny", str(checkpoint["id"]))
    assert again.returncode == 1
    assert "too late" in again.stderr and "approved" in again.stderr
    # The daemon's audit log names who decided.
    audit = _audit(paired.daemon.home)
    assert any(event == "checkpoint.approved" for event, _ in audit)


def test_denied_and_expired_checkpoints(paired: Paired) -> None:
    denied = paired.run(*agent("Delete the database?", "--timeout", "120"))
    checkpoint = _pending(paired, title="Delete the database?")
    assert run_cli(paired.controller, "deny", str(checkpoint["id"])).returncode == 0
    assert Watcher(paired.controller, denied).finish() == 1  # the session failed
    assert paired.session(denied)["exit_code"] == 1  # `starmux checkpoint` said: denied

    expired = paired.run(*agent("Quick question", "--timeout", "1", "--default", "approve"))
    watcher = Watcher(paired.controller, expired)
    watcher.finish()
    assert paired.session(expired)["exit_code"] == 2  # expired, default applied
    assert b"expired" in b"".join(watcher.lines)


def test_forged_decision_is_rejected_and_logged(paired: Paired) -> None:
    session = paired.run(*agent("Forge me", "--timeout", "120"))
    checkpoint = str(_pending(paired, title="Forge me")["id"])

    async def forge() -> tuple[bool, str]:
        async with live_controller(paired.controller) as (store, controller):
            assert controller is not None
            await controller.wait_live()
            machine = next(iter(controller.machines))
            stranger = NodeKeys.generate()  # not a paired controller
            decision = DecideCheckpoint(
                checkpoint, True, "", time.time(), stranger.sign(b"not the transcript")
            )
            await Cache(store.db).enqueue("k-forged", machine, decision.KIND, APP.encode(decision))
            await controller.flush_outbox(controller.machines[machine])
            ack = await controller.command_ack(machine, "k-forged")
            assert ack is not None
            return ack.ok, ack.error

    # The controller agent holds this device's relay connection; a second one with
    # the same key would close it (and be closed by its reconnect): borrow it.
    with relay_link_released(paired.controller):
        ok, error = asyncio.run(forge())
    assert not ok and "does not verify" in error
    assert ("decision.rejected", checkpoint) in [
        (event, detail.split()[1].rstrip(":")) for event, detail in _audit(paired.daemon.home)
    ]
    assert paired.session(session)["status"] == "waiting_approval"  # still undecided
    run_cli(paired.controller, "cancel", session)


def test_claude_pretooluse_hook_round_trip(paired: Paired) -> None:
    payload = (DATA / "bash.json").read_text()
    hook = python(
        "import subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'hook', 'claude-pretooluse',"
        " '--timeout', '2m'], input=sys.argv[1], capture_output=True, text=True)\n"
        "print(r.stdout.strip(), flush=True)\n"
        "sys.exit(r.returncode)\n"
    )
    session = paired.run(*hook, payload)
    rows = poll(lambda: paired.json("approvals") or None, within=20, what="the hook's checkpoint")
    assert isinstance(rows, list)
    assert str(rows[0]["title"]).startswith("Claude wants to run Bash")
    assert run_cli(paired.controller, "approve", str(rows[0]["id"])).returncode == 0
    watcher = Watcher(paired.controller, session)
    assert watcher.finish() == 0
    decision = json.loads(b"".join(watcher.lines))
    assert decision["hookSpecificOutput"]["permissionDecision"] == "allow"


def _audit(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "daemon.sqlite3") as db:
        return [
            (event, detail)
            for event, detail in db.execute("SELECT event, detail FROM audit ORDER BY id")
        ]
