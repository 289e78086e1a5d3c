"""`daemon start --allow-env NAME`: only listed variables from a controller reach a
session, and the list survives a restart (11.15). Real relay, daemon and CLI."""

from __future__ import annotations

from pathlib import Path

from .cluster import pair, python
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess


def test_only_allowed_env_names_are_accepted_and_the_list_is_remembered(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    paired = pair(tmp_path, relay, daemons)
    show = python("import os; print('GREETING=' + os.environ.get('GREETING', '-'))")
    paired.daemon.stop()
    restarted = DaemonProcess(
        paired.daemon.home,
        relay.url,
        extra_args=["--allow-root", str(tmp_path), "--allow-env", "GREETING"],
    ).start()
    daemons.append(restarted)
    restarted.wait_for("connected to")
    paired.daemon = restarted

    def run(*env: str) -> tuple[int, str]:
        result = run_cli(
            paired.controller,
            "run",
            "--machine",
            "gpu-box",
            "--cwd",
            str(paired.workdir),
            *env,
            "--",
            *show,
        )
        return result.returncode, result.stdout + result.stderr

    code, output = run("--env", "GREETING=hello")
    assert code == 0, output
    code, output = run("--env", "GREETING=hi", "--env", "LD_PRELOAD=/tmp/evil.so")
    assert code == 1 and "LD_PRELOAD" in output and "--allow-env" in output, output
    # A restart without the flag keeps the list: it must not silently widen.
    restarted.stop()
    again = DaemonProcess(
        paired.daemon.home, relay.url, extra_args=["--allow-root", str(tmp_path)]
    ).start()
    daemons.append(again)
    again.wait_for("connected to")
    code, output = run("--env", "PYTHONPATH=/tmp")
    assert code == 1 and "PYTHONPATH" in output, output
    code, output = run("--env", "GREETING=again")
    assert code == 0, output
