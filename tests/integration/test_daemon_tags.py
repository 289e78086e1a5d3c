"""`starmux daemon start --tag ... --capacity N` on a real daemon process: stored in its
database before it pairs, kept by a restart without the flags (issue 18)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .daemon_process import DaemonProcess
from .relay_process import RelayProcess


def fleet_settings(home: Path) -> dict[str, bytes]:
    with sqlite3.connect(home / "daemon.sqlite3") as db:
        rows = db.execute("SELECT name, value FROM settings WHERE name IN ('tags', 'capacity')")
        return {str(name): bytes(value) for name, value in rows}


def test_tags_and_capacity_are_remembered(tmp_path: Path, relay: RelayProcess) -> None:
    home = tmp_path / "machine"
    flags = ["--tag", "os=linux", "--tag", "gpu", "--capacity", "2"]
    daemon = DaemonProcess(home, relay.url, extra_args=flags).start()
    try:
        daemon.pairing_code()  # offered once configured: the settings are stored by now
    finally:
        daemon.stop()
    assert fleet_settings(home) == {"tags": b"gpu,os=linux", "capacity": b"2"}

    again = DaemonProcess(home, relay.url).start()  # no flags
    try:
        again.pairing_code()
    finally:
        again.stop()
    assert fleet_settings(home) == {"tags": b"gpu,os=linux", "capacity": b"2"}
