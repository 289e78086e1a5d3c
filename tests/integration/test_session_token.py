"""A process of the daemon's user outside a session cannot raise a checkpoint in it
(11.14): a real daemon, a real session, a real `starmux checkpoint` from outside."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .cluster import pair, python
from .daemon_process import DaemonProcess, starmux_command
from .relay_process import RelayProcess


def test_only_the_session_itself_can_use_its_local_api(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    paired = pair(tmp_path, relay, daemons)
    flag = tmp_path / "done"
    session = paired.run(
        *python(
            "import os, pathlib, subprocess, sys, time\n"
            "r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'cost',"
            " '--input-tokens', '7', '--output-tokens', '0', '--usd', '0'])\n"
            "print('inside', r.returncode, len(os.environ['STARMUX_SESSION_TOKEN']), flush=True)\n"
            f"flag = pathlib.Path({str(flag)!r})\n"
            "while not flag.exists(): time.sleep(0.05)\n"
        )
    )
    # Outside the session, with everything but its token (what `ps e` or the socket's
    # path would tell another process of the user).
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARMUX_")}
    env |= {"STARMUX_SESSION": session, "STARMUX_API": str(paired.daemon.home / "api.sock")}
    for token in (None, "guessed-token-0123456789abcdef"):
        if token:
            env["STARMUX_SESSION_TOKEN"] = token
        outsider = subprocess.run(
            starmux_command("checkpoint", "Let me in?", "--timeout", "5"),
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert outsider.returncode == 3, outsider.stderr
        assert "token" in outsider.stderr
    flag.touch()
    logs = paired.cli("logs", session)
    assert "inside 0 43" in logs  # the session's own call worked, with its own token
    approvals = paired.json("approvals")
    assert approvals == []
