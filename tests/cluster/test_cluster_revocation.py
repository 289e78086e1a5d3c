"""A real daemon revoked through another relay node while Redis was down forgets
its identity, as on one relay (tests/integration/test_pairing.py).

Node B never sees the revoke request and the stream entry is never written (the
bus is down when node A commits it): node B learns of it from PostgreSQL when
Redis returns, and must forward the controller's signed revocation stored there,
or the daemon keeps its keys and retries against close 4003 for ever. Each side
talks to its node directly (no balancer: with Redis down HAProxy would rightly
take both nodes out)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from starmux.close_codes import CloseCode
from starmux.home import load_node_keys
from starmux.pairing_code import parse_pairing_code
from tests.integration.daemon_process import DaemonProcess, run_cli, run_json
from tests.integration.test_pairing import _old_identity_close_code

from .conftest import RelayCluster
from .test_cluster_failures import wait_health


def test_a_daemon_revoked_through_another_node_while_redis_is_down_forgets_its_keys(
    tmp_path: Path, cluster: RelayCluster, daemons: list[DaemonProcess]
) -> None:
    a, b = cluster.nodes
    controller = tmp_path / "controller"
    token = cluster.registration_token
    init = run_cli(controller, "init", "--relay", a.url, "--token", token, "--name", "laptop")
    assert init.returncode == 0, init.stderr
    daemon = DaemonProcess(tmp_path / "gpu-box", b.url, name="gpu-box").start()
    daemons.append(daemon)
    paired = run_cli(controller, "pair", daemon.pairing_code(), "--yes")
    assert paired.returncode == 0, paired.stderr
    daemon.wait_for("connected to")
    assert cluster.holder_of_machines() == [1]
    old_key = tmp_path / "old-machine.key"
    shutil.copy(daemon.home / "machine.key", old_key)
    # The controller agent connects to node A and syncs with the machine while the
    # bus is up, as a running agent would have. Started by `revoke` itself with Redis
    # down, it would sit out its whole first-sync wait (client/agent.py,
    # FIRST_SYNC_WAIT, 10 s) for a machine it cannot reach before taking the command.
    assert run_json(controller, "sessions") == []  # answers after the first sync
    agent = run_json(controller, "controller", "status")["agent"]
    assert agent["relay_url"] == a.url and agent["relay"]["connected"], agent
    assert [(m["name"], m["live"]) for m in agent["machines"]] == [("gpu-box", True)], agent

    cluster.redis.stop()
    for node in (a, b):
        assert "cluster bus" in asyncio.run(wait_health(node, 503))
    mark = len(daemon.output)
    revoked = run_cli(controller, "revoke", "gpu-box", "--yes")  # through node A
    assert revoked.returncode == 0, revoked.stderr
    # Node B cannot know yet: the daemon heard nothing and B still holds it.
    assert "REVOKED" not in daemon.output[mark:]
    assert cluster.holder_of_machines() == [1]

    cluster.redis.start()
    daemon.wait_for("REVOKED by its controller", after=mark, timeout=30)
    # Back to unpaired with a new identity and a new code, as on one relay.
    new_code = parse_pairing_code(daemon.pairing_code(after=mark))
    old_keys = load_node_keys(old_key)
    assert new_code.machine_fingerprint != old_keys.fingerprint
    assert "no revocation signed" not in daemon.output[mark:]
    assert run_json(controller, "machines") == []
    for node in (a, b):
        assert _old_identity_close_code(node, old_keys) == CloseCode.REVOKED
