"""`starmux demo --yes`: the front door works and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..timeouts import poll, scaled
from .daemon_process import starmux_command


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "STARMUX_HOME": str(tmp_path / "unused"),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        starmux_command("demo", "--yes"),
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(120),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "decoded the QR code from the daemon's output" in out
    assert "starmux demo: everything worked" in out
    assert "session" in out and "succeeded; checkpoint approved" in out
    assert "demo agent: approved, result.txt written" in out
    assert "starmux relay serve --host 0.0.0.0" in out  # the multi-machine recipe
    assert "Traceback" not in result.stderr
    assert list(scratch.iterdir()) == []  # the temporary folder is gone
    assert _processes_mentioning(str(scratch)) == []  # no relay or daemon left running
    assert not (tmp_path / "unused").exists()  # the user's own home was never touched


def test_demo_json_summary(tmp_path: Path) -> None:
    import json

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        starmux_command("demo", "--yes", "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(120),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["status"] == "succeeded" and summary["decision"] == "approved"
    assert len(summary["comparison_code"]) == 7


def test_ctrl_c_at_the_prompt_cleans_up(tmp_path: Path) -> None:
    import signal

    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    demo = subprocess.Popen(
        starmux_command("demo"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert demo.stdout is not None
    seen = b""
    while b"Approve it?" not in seen:
        chunk = os.read(demo.stdout.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    assert _processes_mentioning(str(tmp_path))  # relay and daemon are running now
    demo.send_signal(signal.SIGINT)
    code = demo.wait(timeout=scaled(30))
    assert code != 0
    # The children exit after their SIGTERM; poll their absence.
    poll(
        lambda: not _processes_mentioning(str(tmp_path)) or None,
        within=10,
        what="the demo's relay and daemon to exit after SIGINT",
    )
    assert list(tmp_path.iterdir()) == []
