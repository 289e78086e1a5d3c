"""Sessions end to end: real relay, real daemon process, controller CLI processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from starmux.client.agent_client import watch

from .cluster import Paired, pair, python
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def test_run_watch_logs_and_sessions(paired: Paired) -> None:
    session = paired.run(
        *python(
            "import sys\nfor i in range(1, 201): print(f'line {i}')\n"
            "print('oops', file=sys.stderr)\nsys.exit(3)"
        ),
        title="count",
    )
    watched = run_cli(paired.controller, "watch", session)
    expected = "".join(f"line {i}\n" for i in range(1, 201))
    assert watched.stdout == expected
    assert "oops" in watched.stderr
    assert watched.returncode == 3  # watch exits with the session's own code
    row = paired.session(session)
    assert (row["status"], row["exit_code"], row["title"]) == ("failed", 3, "count")
    logs = run_cli(paired.controller, "logs", session)
    assert logs.stdout == expected


def test_cwd_outside_allowed_roots_is_refused(paired: Paired) -> None:
    result = run_cli(paired.controller, "run", "--machine", "gpu-box", "--cwd", "/", "--", "true")
    assert result.returncode == 1
    assert "allow-root" in result.stderr


@pytest.mark.timeout(60)
def test_watch_raises_what_stopped_its_controller_instead_of_hanging(
    paired: Paired, tmp_path: Path
) -> None:
    # The session prints "first", waits for the gate, prints "second". Whatever watch
    # had cached, "second" can only arrive through the live controller's reader
    # (the gate opens once "first" was written), where writing it fails.
    gate = tmp_path / "gate"
    session = paired.run(
        *python(
            "import os, time\nprint('first', flush=True)\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
            "print('second', flush=True)\ntime.sleep(60)"
        ),
        title="gated",
    )

    def write(stream: str, data: bytes) -> None:
        if b"first" in data:
            gate.touch()
        if b"second" in data:
            raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError, match="stdout closed"):
        watch(paired.controller, session, write=write, status=lambda text: None)
    assert gate.exists()
    run_cli(paired.controller, "cancel", session)


def test_starmux_is_on_the_session_path_whatever_the_daemons_path(
    tmp_path: Path,
    relay: RelayProcess,
    daemons: list[DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A venv install: `starmux` lives next to the daemon's Python, not on the PATH the
    # daemon was started with (systemd's, a login shell's). Hooks call `starmux`.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    paired = pair(tmp_path, relay, daemons)
    session = paired.run("sh", "-c", "command -v starmux && starmux --version")
    watched = run_cli(paired.controller, "watch", session)
    assert watched.returncode == 0, watched.stderr
    assert "starmux, version" in watched.stdout
