"""Web Push across relay nodes: the device registers its subscription through node 1,
the machine's daemon is on node 0, and the checkpoint's push still arrives, signed
with the one VAPID key all nodes share (next to their shared --key-file)."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.integration.cluster import python
from tests.integration.daemon_process import DaemonProcess
from tests.integration.push_service import PushService, subscribe_device

from .conftest import RelayCluster
from .services import steer
from .test_across_nodes import agent_via, pair_across


def test_a_push_crosses_nodes(
    tmp_path: Path, cluster: RelayCluster, daemons: list[DaemonProcess]
) -> None:
    assert cluster.proxy is not None
    paired = pair_across(tmp_path, cluster, daemons)
    service = PushService()
    try:
        proxy = cluster.proxy
        agent_via(cluster, 1, paired.controller)
        # The registering connection is steered to node 1 (steer fails loudly if it
        # cannot), while the daemon stays on node 0.
        vapid = subscribe_device(
            paired.controller, service.subscribe(), before_connect=lambda: steer(proxy, 1)
        )
        args = ["checkpoint", "Across nodes?", "--timeout", "120"]
        paired.run(
            *python(
                "import subprocess, sys\n"
                f"sys.exit(subprocess.run([sys.executable, '-m', 'starmux.cli', *{args!r}])"
                ".returncode)\n"
            )
        )
        post = service.wait_for(1, within=10.0)[0]
        assert cluster.holder_of_machines() == [0]  # sent by the daemon on node 0
        authorization = {k.lower(): v for k, v in post.headers.items()}["authorization"]
        k = authorization.split("k=", 1)[1]
        assert base64.urlsafe_b64decode(k + "=" * (-len(k) % 4)) == vapid
    finally:
        service.close()
