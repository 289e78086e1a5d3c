"""Sessions end to end: real relay, real daemon process, controller CLI processes."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert watched.returncode == 1  # the session failed (exit 3)
    row = paired.session(session)
    assert (row["status"], row["exit_code"], row["title"]) == ("failed", 3, "count")
    logs = run_cli(paired.controller, "logs", session)
    assert logs.stdout == expected


def test_cwd_outside_allowed_roots_is_refused(paired: Paired) -> None:
    result = run_cli(paired.controller, "run", "--machine", "gpu-box", "--cwd", "/", "--", "true")
    assert result.returncode == 1
    assert "allow-root" in result.stderr
