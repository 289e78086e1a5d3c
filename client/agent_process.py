"""The controller agent as an operating-system process: its files in the controller
home, and how commands find it, start it on demand, stop it and install it.

Files (the home is 0700):

- ``controller.lock`` / ``controller.json``: the single-instance lock and status file,
  with the same mechanics as the machine daemon's (:mod:`starmux.node.process`).
- ``controller.sock``: the agent's Unix socket (0600), created by the lock holder.
- ``controller.log``: the agent's log when it was started in the background (0600).

Found: a command connects to ``controller.sock``. Started: if nothing answers there
and no agent holds the lock, the command starts ``python -m starmux.cli controller
start --foreground --home HOME`` in the background (new session, output to the log)
and waits until it holds the lock and serves. Two commands racing to start it are
fine: the lock lets one win and the other connects to it.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Final

from starmux.node import process as _process

from .agent_client import LOG_FILE

UNIT_NAME: Final = "starmux-controller.service"


class AgentState(enum.StrEnum):
    STARTING = _process.STARTING  # lock taken, socket not yet listening
    SERVING = "serving"  # answering commands (connected to the relay or retrying)


AGENT_FILES: Final = _process.ProcessFiles(
    lock="controller.lock",
    status="controller.json",
    format="starmux-controller-agent-status-v1",
    noun="starmux controller agent",
    command="starmux controller",
    states=frozenset(state.value for state in AgentState),
)


def foreground_argv(home: Path) -> list[str]:
    """The command that runs this home's agent in the foreground (detach, systemd)."""
    return [
        sys.executable,
        "-m",
        "starmux.cli",
        "controller",
        "start",
        "--foreground",
        "--home",
        str(home.absolute()),
    ]


def start_in_background(home: Path, *, ready_timeout: float = 15.0) -> int:
    """Start the agent detached; its pid once it serves. Raises
    :class:`~starmux.node.process.ProcessAlreadyRunning` if one already runs."""
    return _process.detach(
        foreground_argv(home),
        home=home,
        files=AGENT_FILES,
        log_file=home / LOG_FILE,
        ready_timeout=ready_timeout,
    )


def read_status(home: Path) -> _process.ProcessStatus | None:
    return _process.read_status(home, AGENT_FILES)


def stop_agent(home: Path, *, timeout: float = 10.0) -> bool:
    return _process.stop_process(home, AGENT_FILES, timeout=timeout)
