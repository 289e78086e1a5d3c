"""Fixtures for network-fault tests: the namespaced network, and a relay, a daemon and
a controller paired across it. Everything made here is removed after the test, also
when it fails; namespaces a killed run left behind are removed before."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..integration.cluster import Paired
from ..integration.conftest import stop_controller_agents
from ..integration.daemon_process import DaemonProcess, run_cli
from ..integration.relay_process import RelayProcess
from ..integration.watcher import Watcher
from .netns import NetNamespace, NetworkSetupError, missing_requirement, remove_stale
from .topology import RELAY_PORT, RELAY_URL, FaultNet

# Controller commands start a controller agent per home: stop them after each test.
__all__ = ["stop_controller_agents"]

#: The relay drops a dead daemon connection within ping interval + timeout (7 s, not
#: the default 40 s); 5 s to answer, so a busy CI machine does not make it flap.
RELAY_ENV = {"STARMUX_RELAY_PING_INTERVAL": "2", "STARMUX_RELAY_PING_TIMEOUT": "5"}


@pytest.fixture
def net() -> Iterator[FaultNet]:
    problem = missing_requirement()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    created: list[NetNamespace] = []
    built: FaultNet | None = None
    try:
        remove_stale()
        built = FaultNet.build(created)
        yield built
    except NetworkSetupError as exc:
        pytest.fail(f"cannot build the fault-test network: {exc}", pytrace=False)
    finally:
        if built is not None:
            built.remove()
        leftovers = []
        for ns in reversed(created):
            try:
                ns.delete()
            except NetworkSetupError as exc:
                leftovers.append(str(exc))
        if leftovers:
            pytest.fail("could not remove: " + "; ".join(leftovers), pytrace=False)


@dataclass
class FaultCluster:
    net: FaultNet
    paired: Paired
    watchers: list[Watcher] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 60.0) -> str:
        """A controller command, run from the controller's namespace; if it fails or
        hangs, the test fails with what the daemon and the relay said."""
        command = "starmux " + " ".join(args)
        try:
            result = self.net.controller.call(
                run_cli, self.paired.controller, *args, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            pytest.fail(
                f"{command} hung for {timeout:.0f} s; stderr:\n{stderr}{self.diagnostics()}"
            )
        if result.returncode != 0:
            pytest.fail(
                f"{command} exited {result.returncode}:\n{result.stderr}{self.diagnostics()}"
            )
        return result.stdout

    def run(self, *argv: str, title: str) -> str:
        """Start a session on the machine; returns its id."""
        paired = self.paired
        where = ["--machine", paired.daemon.name, "--cwd", str(paired.workdir)]
        reply = json.loads(self.cli("run", "--json", *where, "--title", title, "--", *argv))
        if reply.get("ok") is not True:
            pytest.fail(f"starmux run: {reply}{self.diagnostics()}")
        return str(reply["session"])

    def status(self, session: str) -> str:
        rows = json.loads(self.cli("sessions", "--json"))
        return str(next(row["status"] for row in rows if row["id"] == session))

    def diagnostics(self, tail: int = 6000) -> str:
        daemon, relay = self.paired.daemon, self.paired.relay
        return (
            f"\n--- daemon stdout ---\n{daemon.output[-tail:]}"
            f"\n--- daemon stderr ---\n{''.join(daemon.stderr)[-tail:]}"
            f"\n--- relay ---\n{''.join(relay.output)[-tail:]}"
        )

    def watch(self, session: str) -> Watcher:
        watcher = self.net.controller.call(Watcher, self.paired.controller, session)
        self.watchers.append(watcher)
        return watcher


@pytest.fixture
def cluster(net: FaultNet, tmp_path: Path) -> Iterator[FaultCluster]:
    """Relay in its namespace, controller initialised in its own, daemon on the
    machine, paired through the relay as a user would (``init``, ``pair CODE``)."""
    relay = RelayProcess(
        tmp_path / "relay",
        port=RELAY_PORT,
        env=RELAY_ENV,
        extra_args=["--host", "0.0.0.0", "--public-url", RELAY_URL],
    )
    daemon = DaemonProcess(
        tmp_path / "gpu-box", RELAY_URL, extra_args=["--allow-root", str(tmp_path)]
    )
    controller = tmp_path / "controller"
    workdir = tmp_path / "work"
    workdir.mkdir()
    cluster = FaultCluster(net, Paired(relay, controller, daemon, workdir))
    try:
        net.relay.call(relay.start)
        init = net.controller.call(
            run_cli,
            controller,
            "init",
            "--relay",
            RELAY_URL,
            "--token",
            relay.registration_token or "",
            "--name",
            "laptop",
        )
        assert init.returncode == 0, init.stderr
        net.machine.call(daemon.start)
        code = daemon.pairing_code()
        paired = net.controller.call(run_cli, controller, "pair", code, "--yes")
        assert paired.returncode == 0, paired.stderr
        daemon.wait_for("connected to")
        yield cluster
    finally:
        for watcher in cluster.watchers:
            watcher.kill()
        with contextlib.suppress(NetworkSetupError):
            net.clear_faults()  # let the daemon say goodbye over a working link
        daemon.stop()
        relay.kill()
        # What the daemon and the relay said, kept beside the figures: a fault test
        # that fails in CI must be diagnosable from its tmp dir alone.
        (tmp_path / "processes.log").write_text(cluster.diagnostics(tail=10**8))
