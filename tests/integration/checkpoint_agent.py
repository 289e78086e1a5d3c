"""An agent process that raises one checkpoint, for the notification tests: it writes
when it is about to raise it (so latency is measured from the agent's side), and the
daemon's own record of when it logged it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .cluster import Paired, python


def agent(stamp: Path, title: str, body: str, *extra: str) -> list[str]:
    """argv of a process that stamps the time, then runs `starmux checkpoint`."""
    args = ["checkpoint", title, "--body", body, *extra]
    return python(
        "import subprocess, sys, time\n"
        f"open({str(stamp)!r}, 'w').write(repr(time.time()))\n"
        f"r = subprocess.run([sys.executable, '-m', 'starmux.cli', *{args!r}])\n"
        "sys.exit(r.returncode)\n"
    )


def raised_at(paired: Paired) -> float:
    """When the daemon logged the (only) checkpoint: its own clock, this machine's."""
    with sqlite3.connect(paired.daemon.home / "daemon.sqlite3") as db:
        return float(db.execute("SELECT min(created_at) FROM checkpoints").fetchone()[0])
