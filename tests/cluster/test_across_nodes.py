"""Pairing, a watched session and a checkpoint with the daemon and the controller on
different relay nodes, both reaching the cluster through HAProxy (round robin)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.cluster import Paired, python
from tests.integration.daemon_process import DaemonProcess, run_cli
from tests.integration.relay_process import RelayProcess
from tests.integration.test_checkpoints import _pending, agent
from tests.integration.watcher import Watcher

from .conftest import RelayCluster
from .services import steer

COUNTER = (
    "import time\n"
    "for i in range(1, 10001):\n"
    "    print(i, flush=True)\n"
    "    if i % 500 == 0:\n"
    "        time.sleep(0.05)\n"
)


def landed_on(cluster: RelayCluster, before: dict[str, tuple[str, int]]) -> set[str]:
    """Which nodes got the client connections made since ``before``."""
    assert cluster.proxy is not None
    after = cluster.proxy.servers()
    return {name for name, (_, total) in after.items() if total > before[name][1]}


def agent_via(cluster: RelayCluster, node: int, controller: Path) -> dict[str, tuple[str, int]]:
    """Make the controller's next relay connection land on ``node``.

    Controller commands share the device's one connection, held by its controller
    agent: stop the agent, steer HAProxy, and the next command starts the agent
    through ``node``. Returns HAProxy's counters from before, for :func:`landed_on`."""
    assert cluster.proxy is not None
    run_cli(controller, "controller", "stop")  # none running is fine too
    steer(cluster.proxy, node)
    return cluster.proxy.servers()


def pair_across(tmp_path: Path, cluster: RelayCluster, daemons: list[DaemonProcess]) -> Paired:
    """Daemon on node 0, the controller's `pair` on node 1."""
    assert cluster.proxy is not None
    controller = tmp_path / "controller"
    token = cluster.registration_token
    init = run_cli(controller, "init", "--relay", cluster.url, "--token", token, "--name", "laptop")
    assert init.returncode == 0, init.stderr
    workdir = tmp_path / "work"
    workdir.mkdir()
    steer(cluster.proxy, 0)
    allow = ["--allow-root", str(tmp_path)]
    daemon = DaemonProcess(tmp_path / "gpu-box", cluster.url, name="gpu-box", extra_args=allow)
    daemon.start()
    daemons.append(daemon)
    code = daemon.pairing_code()
    steer(cluster.proxy, 1)
    before = cluster.proxy.servers()
    paired = run_cli(controller, "pair", code, "--yes")
    assert paired.returncode == 0, paired.stderr
    assert landed_on(cluster, before) == {"n1"}, "the controller should have paired via node 1"
    daemon.wait_for("connected to")
    assert cluster.holder_of_machines() == [0]
    relay = RelayProcess(tmp_path, url=cluster.url, registration_token=token)
    return Paired(relay, controller, daemon, workdir)


def test_pair_watch_and_approve_across_nodes(
    tmp_path: Path, cluster: RelayCluster, daemons: list[DaemonProcess]
) -> None:
    assert cluster.proxy is not None
    paired = pair_across(tmp_path, cluster, daemons)

    before = agent_via(cluster, 1, paired.controller)
    session = paired.run(*python(COUNTER), title="counter")
    watcher = Watcher(paired.controller, session)
    watcher.wait_lines(1)
    assert landed_on(cluster, before) == {"n1"}, "the controller should run through node 1"
    assert watcher.finish() == 0, b"".join(watcher.errors).decode(errors="replace")
    assert watcher.lines == [f"{i}\n".encode() for i in range(1, 10001)]
    assert paired.session(session)["status"] == "succeeded"

    # A checkpoint raised on node 0's daemon, approved by a controller on node 1.
    session = paired.run(*agent("Deploy to prod?", "--timeout", "120"))
    checkpoint = _pending(paired, title="Deploy to prod?")
    before = cluster.proxy.servers()
    approved = run_cli(paired.controller, "approve", str(checkpoint["id"]), "--reason", "ok")
    assert approved.returncode == 0, approved.stderr
    # Through the agent's connection on node 1 (no new one), to the daemon on node 0.
    assert landed_on(cluster, before) == set()
    watcher = Watcher(paired.controller, session)
    assert watcher.finish() == 0
    report = b"".join(watcher.lines).decode()
    assert report.startswith("exit 0 ")
    assert json.loads(report.split(" ", 2)[2].split("\n")[0])["decision"] == "approved"
    assert cluster.holder_of_machines() == [0]  # the daemon never moved


def test_sigkill_of_the_daemons_node_loses_no_line(
    tmp_path: Path, cluster: RelayCluster, daemons: list[DaemonProcess]
) -> None:
    assert cluster.proxy is not None
    paired = pair_across(tmp_path, cluster, daemons)
    go = tmp_path / "go"
    # Half the output, then (once the node is dead and the daemon back) the rest:
    # the kill lands mid-session, and output flows on both sides of it.
    chatty = (
        "import os, time\n"
        "for i in range(1, 5001):\n"
        "    print(i, flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.05)\n"
        "for i in range(5001, 10001):\n"
        "    print(i, flush=True)\n"
        "    if i % 500 == 0:\n"
        "        time.sleep(0.05)\n"
    )
    agent_via(cluster, 1, paired.controller)
    session = paired.run(*python(chatty), title="chatty")
    watcher = Watcher(paired.controller, session)
    watcher.wait_lines(5000)

    mark = len(paired.daemon.output)
    cluster.nodes[0].kill()  # the node holding the daemon, mid-session
    paired.daemon.wait_for("connected to", after=mark, timeout=30)  # back through HAProxy
    assert cluster.holder_of_machines() == [1]
    go.touch()

    assert watcher.finish() == 0, b"".join(watcher.errors).decode(errors="replace")
    assert watcher.lines == [f"{i}\n".encode() for i in range(1, 10001)]
    assert paired.session(session)["status"] == "succeeded"
