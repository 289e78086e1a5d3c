"""The machine daemon as an operating-system process: ``daemon.lock`` and
``daemon.json`` in its home. The mechanics (the lock is the truth, probes are shared
locks, detach waits for readiness) are shared with the controller agent and live in
:mod:`starmux.node.process`; this module binds them to the daemon's files and states.

API (what ``starmux daemon start|stop|status`` call)::

    with DaemonLock(home, argv=sys.argv, relay_url=url) as lock:   # DaemonAlreadyRunning
        lock.update_status(state=DaemonState.UNPAIRED, fingerprint=fp)
    read_status(home) -> DaemonStatus | None                 # `daemon status [--json]`
    stop_daemon(home, timeout=10.0) -> bool                  # `daemon stop`
    detach([sys.executable, "-m", "starmux.cli", "daemon", "start", "--foreground", ...],
           home=home, log_file=home / "daemon.log") -> pid   # `daemon start` (background)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from starmux.node import process as _process
from starmux.node.process import ProcessAlreadyRunning, ProcessStartError, ProcessStopError

LOCK_FILE: Final = "daemon.lock"
STATUS_FILE: Final = "daemon.json"


class DaemonState(enum.StrEnum):
    STARTING = _process.STARTING  # lock taken, not yet talking to the relay
    UNPAIRED = "unpaired"  # waiting for a controller to scan the pairing code
    PAIRED = "paired"  # paired and connected to the relay
    CONNECTING = "connecting"  # paired, (re)connecting to the relay
    STOPPING = "stopping"  # shutting down sessions and the link


DAEMON_FILES: Final = _process.ProcessFiles(
    lock=LOCK_FILE,
    status=STATUS_FILE,
    format="starmux-daemon-status-v1",
    noun="starmux daemon",
    command="starmux daemon",
    states=frozenset(state.value for state in DaemonState),
)

DaemonAlreadyRunning = ProcessAlreadyRunning
DaemonStartError = ProcessStartError
DaemonStopError = ProcessStopError
DaemonStatus = _process.ProcessStatus


class DaemonLock(_process.ProcessLock):
    """Hold ``<home>/daemon.lock`` and keep ``<home>/daemon.json`` current."""

    def __init__(
        self,
        home: Path,
        *,
        argv: Sequence[str],
        relay_url: str | None = None,
        fingerprint: str | None = None,
        started_at: float | None = None,
    ) -> None:
        super().__init__(
            home,
            DAEMON_FILES,
            argv=argv,
            relay_url=relay_url,
            fingerprint=fingerprint,
            started_at=started_at,
        )


def lock_path(home: Path) -> Path:
    return _process.lock_path(home, DAEMON_FILES)


def status_path(home: Path) -> Path:
    return _process.status_path(home, DAEMON_FILES)


def read_status(home: Path, *, now: float | None = None) -> DaemonStatus | None:
    return _process.read_status(home, DAEMON_FILES, now=now)


def stop_daemon(home: Path, *, timeout: float = 10.0) -> bool:
    return _process.stop_process(home, DAEMON_FILES, timeout=timeout)


def detach(argv: list[str], *, home: Path, log_file: Path, ready_timeout: float = 15.0) -> int:
    return _process.detach(
        argv, home=home, files=DAEMON_FILES, log_file=log_file, ready_timeout=ready_timeout
    )


__all__ = [
    "DAEMON_FILES",
    "LOCK_FILE",
    "STATUS_FILE",
    "DaemonAlreadyRunning",
    "DaemonLock",
    "DaemonStartError",
    "DaemonState",
    "DaemonStatus",
    "DaemonStopError",
    "detach",
    "lock_path",
    "read_status",
    "status_path",
    "stop_daemon",
]
