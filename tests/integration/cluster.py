"""A paired controller + machine on a real relay, as test fixtures build it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..timeouts import poll
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess


@dataclass
class Paired:
    relay: RelayProcess
    controller: Path
    daemon: DaemonProcess
    workdir: Path

    def cli(self, *args: str, timeout: float = 60.0) -> str:
        result = run_cli(self.controller, *args, timeout=timeout)
        command = " ".join(args)
        assert result.returncode == 0, f"starmux {command}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, command: str, *args: str) -> object:
        return json.loads(self.cli(command, "--json", *args))

    def run(self, *argv: str, title: str = "") -> str:
        """Start a session; returns its id."""
        extra = ["--title", title] if title else []
        reply = self.json(
            "run", "--machine", self.daemon.name, "--cwd", str(self.workdir), *extra, "--", *argv
        )
        assert isinstance(reply, dict) and reply["ok"] is True, reply
        return str(reply["session"])

    def session(self, session_id: str) -> dict[str, object]:
        rows = self.json("sessions")
        assert isinstance(rows, list)
        return next(r for r in rows if r["id"] == session_id)


def pending_checkpoint(
    cli: Callable[..., str], title: str, *, within: float = 20.0
) -> dict[str, object]:
    """Poll ``starmux approvals --json`` (each call syncs afresh) until the checkpoint
    titled ``title`` shows; ``cli`` runs a controller command and returns stdout."""

    def find() -> dict[str, object] | None:
        rows = json.loads(cli("approvals", "--json"))
        return next((dict(row) for row in rows if row["title"] == title), None)

    return poll(find, within=within, what=f"checkpoint {title!r} in `starmux approvals`")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def pair(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess], name: str = "gpu-box"
) -> Paired:
    # The daemon starts first (it does not block) and boots while `init` registers
    # the controller: the two are independent, and each takes a second on a slow box.
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    daemon = DaemonProcess(
        tmp_path / name, relay.url, name=name, extra_args=["--allow-root", str(tmp_path)]
    ).start()
    daemons.append(daemon)
    controller = tmp_path / "controller"
    init = run_cli(
        controller,
        "init",
        "--relay",
        relay.url,
        "--token",
        relay.registration_token or "",
        "--name",
        "laptop",
    )
    assert init.returncode == 0, init.stderr
    paired = run_cli(controller, "pair", daemon.pairing_code(), "--yes")
    assert paired.returncode == 0, paired.stderr
    daemon.wait_for("connected to")
    return Paired(relay, controller, daemon, workdir)
