"""The web controller's protocol modules (web/proto, JavaScript) against the Python
side through a real relay and real daemon processes (issue 15).

The JS side is web/tools/node_peer.mjs run by Node: a controller device made only of
web/proto's modules. Both directions of each protocol the browser takes part in:

- linking: JS as the new device (XXpsk3 initiator) with a CLI owner as inviter, and
  JS as the inviting owner (XXpsk3 responder) with a CLI device joining;
- pairing: JS pairs a real daemon (XXpsk3 with the machine, the grant at the relay);
- live: JS runs Noise_KK with real daemons, syncs their event logs (sessions), starts a
  session and reads its output; the CLI sees what JS started and the other way round;
- and the responder roles the browser never takes, for the protocol's sake: the CLI
  pairs a JS machine (XXpsk3 responder) and syncs it over KK (JS as KK responder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ..timeouts import poll, scaled
from .cluster import Paired, pair, pending_checkpoint
from .daemon_process import DaemonProcess, run_cli, run_json, starmux_command
from .relay_process import RelayProcess
from .shown_codes import Inviter
from .test_checkpoints import agent

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "web" / "tools" / "node_peer.mjs"
COMPARISON = re.compile(r"comparison code: (\d{3}-\d{3})")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node not found: the web controller's interop tests need Node.js 20.19+ "
            "(Debian: apt-get install nodejs; tests/setup_system.py does it as root)"
        )
    return node


class NodePeer:
    """One run of the JS controller; its JSON lines arrive as they are printed."""

    def __init__(self, home: Path, request: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [_node(), "--experimental-websocket", "--no-warnings", str(PEER), str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request))  # codes and tokens: never in argv
        self.process.stdin.close()
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + scaled(timeout)
        with self._changed:
            while True:
                for item in self.events:
                    if item["event"] == "error":
                        raise AssertionError(f"the JS side failed: {item}\n{self._stderr()}")
                    if item["event"] == event:
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._more()):
                    raise AssertionError(f"no {event!r} from the JS side: {self.events}")
                self._changed.wait(min(remaining, 0.5))

    def _more(self) -> bool:
        assert self.process.stdout is not None
        return not self.process.stdout.closed and self.process.poll() is None

    def _stderr(self) -> str:
        self.process.wait(timeout=scaled(10))
        return self.process.stderr.read() if self.process.stderr else ""

    def finish(self) -> None:
        assert self.process.wait(timeout=scaled(60)) == 0, f"{self.events}\n{self._stderr()}"


def js(home: Path, request: dict[str, Any], event: str) -> dict[str, Any]:
    peer = NodePeer(home, request)
    result = peer.wait(event)
    peer.finish()
    return result


def test_js_device_links_to_a_cli_owner_then_lists_and_runs_sessions(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    owner = pair(tmp_path, relay, daemons)
    earlier = owner.run("echo", "before the browser")
    js_home = tmp_path / "js"

    inviter = Inviter(owner.controller, "operator")
    linked_peer = NodePeer(
        js_home, {"command": "link", "code": inviter.wait_code(), "name": "js-phone"}
    )
    linked = linked_peer.wait("linked")
    shown = linked_peer.wait("comparison")
    linked_peer.finish()
    inviter.finish()
    match = COMPARISON.search("".join(inviter.err))
    assert match is not None and match.group(1) == shown["code"]  # both showed the same
    assert linked["role"] == "operator"
    assert sorted(linked["devices"]) == ["js-phone", "laptop"]
    assert linked["machines"] == [owner.daemon.name]
    assert (js_home / "state.json").stat().st_mode & 0o777 == 0o600
    devices = owner.json("devices")
    assert isinstance(devices, list)
    assert {(d["name"], d["role"]) for d in devices} == {
        ("laptop", "owner"),
        ("js-phone", "operator"),
    }

    listed = js(js_home, {"command": "sessions"}, "sessions")
    (machine,) = listed["machines"]
    assert machine["machine"] == owner.daemon.name
    by_id = {s["id"]: s for s in machine["sessions"]}
    assert by_id[earlier]["argv"] == ["echo", "before the browser"]

    ran = js(
        js_home,
        {"command": "run", "argv": ["echo", "hello from js"], "cwd": str(owner.workdir)},
        "ran",
    )
    assert ran["ack"] is True and ran["status"] == "succeeded"
    assert ran["output"] == "hello from js\n"
    assert owner.session(ran["session"])["status"] == "succeeded"  # the CLI sees it too
    print(f"JS sync of {len(by_id)} sessions over KK: {machine['ms']} ms")

    # An approval signed in JS: the daemon verifies it, the agent goes on, and the
    # owner's later answer is too late.
    waiting = owner.run(*agent("Ship it?", "--timeout", "120"))
    pending_checkpoint(owner.cli, "Ship it?")
    decided = js(
        js_home,
        {"command": "decide", "title": "Ship it?", "approve": True, "reason": "go"},
        "decided",
    )
    assert decided["ok"] is True and decided["result"] == "approved", decided
    assert decided["status"] == "succeeded"
    assert '"decision": "approved"' in decided["output"]
    late = run_cli(owner.controller, "approve", decided["checkpoint"])
    assert late.returncode != 0 and "too late" in late.stdout + late.stderr
    assert owner.session(waiting)["status"] == "succeeded"
    print(
        f"JS approve: ack {decided['ack_ms']} ms, agent finished {decided['end_ms']} ms "
        "after the decision was sent"
    )


def test_js_owner_pairs_a_daemon_and_links_a_cli_device(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    js_home = tmp_path / "js"
    registered = js(
        js_home,
        {
            "command": "register",
            "relay": relay.url,
            "token": relay.registration_token or "",
            "name": "web-owner",
        },
        "registered",
    )
    assert len(registered["account"]) == 32

    daemon = DaemonProcess(
        tmp_path / "box", relay.url, name="js-box", extra_args=["--allow-root", str(tmp_path)]
    ).start()
    daemons.append(daemon)
    code = daemon.pairing_code()
    paired_peer = NodePeer(js_home, {"command": "pair", "code": code})
    paired = paired_peer.wait("paired")
    listed = paired_peer.wait("listed")
    paired_peer.finish()
    assert paired["machine"] == "js-box"
    assert [m["name"] for m in listed["machines"]] == ["js-box"]  # the relay's list has it
    daemon.wait_for("connected to")

    workdir = tmp_path / "work"
    workdir.mkdir()
    ran = js(
        js_home, {"command": "run", "argv": ["echo", "paired by js"], "cwd": str(workdir)}, "ran"
    )
    assert ran["status"] == "succeeded" and ran["output"] == "paired by js\n"

    # The CLI joins the JS owner's account: JS is the inviter (the XXpsk3 responder).
    invite = NodePeer(js_home, {"command": "invite", "role": "operator"})
    link_code = invite.wait("code")["code"]
    cli_home = tmp_path / "cli"
    env = {**os.environ, "STARMUX_HOME": str(cli_home), "NO_COLOR": "1"}
    joined = subprocess.run(
        starmux_command("link", "-", "--name", "py-laptop", "--yes"),
        input=link_code,
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(60),
        check=False,
    )
    assert joined.returncode == 0, joined.stdout + joined.stderr
    done = invite.wait("linked")
    shown = invite.wait("comparison")
    invite.finish()
    match = COMPARISON.search(joined.stderr)
    assert match is not None and match.group(1) == shown["code"]
    assert done["device"] == "py-laptop"
    cli = Paired(relay, cli_home, daemon, workdir)
    devices = cli.json("devices")
    assert isinstance(devices, list)
    assert {(d["name"], d["role"]) for d in devices} == {
        ("web-owner", "owner"),
        ("py-laptop", "operator"),
    }
    assert cli.session(ran["session"])["status"] == "succeeded"  # the daemon JS paired
    started = cli.run("echo", "from the cli")
    listed_again = js(js_home, {"command": "sessions"}, "sessions")
    ids = {s["id"] for s in listed_again["machines"][0]["sessions"]}
    assert {ran["session"], started} <= ids
    print(f"JS: pairing code read to machine granted {paired['ms']} ms, listed {listed['ms']} ms")
    assert run_cli(cli_home, "machines", "--json").returncode == 0


def test_cli_pairs_a_js_machine_and_syncs_it_over_kk(tmp_path: Path, relay: RelayProcess) -> None:
    """The JS side as the responder of both Noise patterns: XXpsk3 (pairing) and KK."""
    controller = tmp_path / "controller"
    init = run_cli(
        controller, "init", "--relay", relay.url, "--token", relay.registration_token or "",
        "--name", "laptop",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    machine = NodePeer(tmp_path / "js-machine", {"command": "machine", "relay": relay.url,
                                                 "name": "js-box"})  # fmt: skip
    try:
        code = machine.wait("code")["code"]
        paired = run_cli(controller, "pair", code, "--yes")
        assert paired.returncode == 0, paired.stdout + paired.stderr
        assert machine.wait("paired")["controller"] == "laptop"
        rows = poll(
            lambda: [r for r in run_json(controller, "sessions") if r["id"] == "js-served"] or None,
            within=30,
            what="the JS machine's session in the CLI's list",
        )
        assert rows[0]["status"] == "succeeded"
        assert machine.wait("served")["events"] == 2
    finally:
        machine.process.terminate()
        machine.process.wait(timeout=scaled(10))
