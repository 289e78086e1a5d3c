"""A controller with several tagged machines on a real relay, for the fleet tests
(issue 18): real daemon processes, the real controller agent, the real CLI."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starmux.client import agent_client

from ..timeouts import poll
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess


def waiting_for(gate: Path) -> list[str]:
    """A command that runs until ``gate`` exists."""
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    return [sys.executable, "-c", code]


@dataclass
class Fleet:
    tmp_path: Path
    relay: RelayProcess
    daemons: list[DaemonProcess]
    controller: Path = field(init=False)
    workdir: Path = field(init=False)
    machines: dict[str, DaemonProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.controller = self.tmp_path / "controller"
        self.workdir = self.tmp_path / "work"
        self.workdir.mkdir(exist_ok=True)
        init = run_cli(
            self.controller,
            "init",
            "--relay",
            self.relay.url,
            "--token",
            self.relay.registration_token or "",
            "--name",
            "laptop",
        )
        assert init.returncode == 0, init.stderr

    def start(self, name: str, *flags: str, roots: list[Path] | None = None) -> DaemonProcess:
        """Start machine ``name`` (paired the first time) with daemon flags; its allowed
        roots are ``roots`` (default: the whole test folder)."""
        allowed = [f"--allow-root={root}" for root in roots or [self.tmp_path]]
        extra = [*allowed, *flags]
        daemon = DaemonProcess(self.tmp_path / name, self.relay.url, name=name, extra_args=extra)
        daemon.start()
        self.daemons.append(daemon)
        if name not in self.machines:
            paired = run_cli(self.controller, "pair", daemon.pairing_code(), "--yes")
            assert paired.returncode == 0, paired.stderr
        daemon.wait_for("connected to")
        self.machines[name] = daemon
        return daemon

    def cli(self, *args: str) -> str:
        result = run_cli(self.controller, *args)
        assert result.returncode == 0, f"starmux {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request to the controller agent (what every command does, without
        a Python start-up per poll)."""
        return agent_client.call(self.controller, op, **fields)

    def submit(self, argv: list[str], **fields: Any) -> list[dict[str, Any]]:
        reply = self.call("submit", argv=argv, cwd=str(self.workdir), **fields)
        return list(reply["tasks"])

    def tasks(self) -> dict[str, dict[str, Any]]:
        return {t["id"]: t for t in self.call("tasks")["tasks"]}

    def wait(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], what: str, within: float = 30
    ) -> dict[str, dict[str, Any]]:
        def probe() -> dict[str, dict[str, Any]] | None:
            tasks = self.tasks()
            return tasks if check(tasks) else None

        return poll(probe, within=within, what=what, every=0.02)

    def states(self, *ids: str) -> dict[str, str]:
        tasks = self.tasks()
        return {i: tasks[i]["state"] for i in ids}

    def machine_rows(self, name: str) -> dict[str, tuple[Any, ...]]:
        """The machine's own task queue: id → (state, attempt, started_at, finished_at)."""
        with sqlite3.connect(self.tmp_path / name / "daemon.sqlite3") as db:
            return {
                str(r[0]): tuple(r[1:])
                for r in db.execute("SELECT id, state, attempt, started_at, finished_at FROM tasks")
            }

    def machines_json(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in json.loads(self.cli("machines", "--json"))}

    def reported(self, *names: str) -> dict[str, dict[str, Any]]:
        """``machines --json`` once every named machine reported its tags and load
        (the first report arrives with the machine's first sync)."""

        def probe() -> dict[str, dict[str, Any]] | None:
            views = {v["name"]: v for v in self.call("machines")["machines"]}
            if all(views.get(n, {}).get("capacity") is not None for n in names):
                return self.machines_json()
            return None

        return poll(probe, within=20, what=f"{names} reported their load")


def now() -> float:
    return time.time()
