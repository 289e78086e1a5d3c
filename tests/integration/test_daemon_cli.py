"""`starmux daemon start --detach | status | stop | install` as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .daemon_process import run_cli
from .relay_process import RelayProcess


def test_detach_status_single_instance_and_stop(tmp_path: Path, relay: RelayProcess) -> None:
    home = tmp_path / "machine"
    started = run_cli(home, "daemon", "start", "--detach", "--relay", relay.url, "--name", "box")
    assert started.returncode == 0, started.stderr
    try:
        status = json.loads(run_cli(home, "daemon", "status", "--json").stdout)
        assert status["alive"] is True
        assert status["state"] in ("connecting", "unpaired")
        second = run_cli(home, "daemon", "start", "--relay", relay.url)
        assert second.returncode == 2
        assert "already running" in second.stderr and str(status["pid"]) in second.stderr
        log = (home / "daemon.log").read_text()
        assert (home / "daemon.log").stat().st_mode & 0o077 == 0
        assert "daemon" in log or "starmux" in log
    finally:
        stopped = run_cli(home, "daemon", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = run_cli(home, "daemon", "status")
    assert after.returncode == 3 and "not running" in after.stdout


def test_install_writes_a_user_unit(tmp_path: Path) -> None:
    home = tmp_path / "machine"
    env_home = tmp_path / "config"
    os.environ["XDG_CONFIG_HOME"] = str(env_home)
    try:
        result = run_cli(home, "daemon", "install", "--relay", "ws://127.0.0.1:8765")
    finally:
        del os.environ["XDG_CONFIG_HOME"]
    assert result.returncode == 0, result.stderr
    unit = env_home / "systemd" / "user" / "starmux-daemon.service"
    text = unit.read_text()
    assert "ExecStart=" in text and "daemon start --foreground" in text
    assert f"STARMUX_HOME={home}" in text
    assert "systemctl --user enable --now starmux-daemon.service" in result.stdout


def test_allow_root_is_remembered_across_restarts_and_shown(
    tmp_path: Path, relay: RelayProcess
) -> None:
    home = tmp_path / "machine"
    root = tmp_path / "src"
    root.mkdir()
    first = run_cli(
        home, "daemon", "start", "--detach", "--relay", relay.url, "--allow-root", str(root)
    )
    assert first.returncode == 0, first.stderr
    try:
        shown = run_cli(home, "daemon", "status")
        assert f"sessions may run under: {root.resolve()}" in shown.stdout, shown.stdout
    finally:
        assert run_cli(home, "daemon", "stop").returncode == 0
    # Restarted without --allow-root (as a hand restart or an old unit would): the
    # roots stay what they were instead of widening to the home.
    again = run_cli(home, "daemon", "start", "--detach")
    assert again.returncode == 0, again.stderr
    try:
        status = json.loads(run_cli(home, "daemon", "status", "--json").stdout)
        assert status["details"]["allow_roots"] == [str(root.resolve())]
    finally:
        run_cli(home, "daemon", "stop")
