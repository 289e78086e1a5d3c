"""A real relay in a subprocess on a real port, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue

from ..timeouts import START, scaled

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RelayProcess:
    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    #: set: the relay's clock is moved by :meth:`advance_clock` (relay_clock_host.py)
    clock_file: Path | None = None
    process: subprocess.Popen[str] | None = None
    url: str = ""
    fingerprint: str = ""
    registration_token: str | None = None
    registration_token_file: Path | None = None
    #: the separate /metrics listener's URL, when metrics_port is set
    metrics_url: str = ""
    #: the /livez listener's URL, when livez_port is set
    livez_url: str = ""
    #: runs in the child before exec (e.g. to lower a resource limit)
    preexec: Callable[[], None] | None = None
    output: list[str] = field(default_factory=list)
    _lines: Queue[str] = field(default_factory=Queue)

    def start(self) -> RelayProcess:
        env = {**os.environ, **self.env}
        if self.clock_file is None:
            command = [sys.executable, "-m", "starmux.cli", "relay", "serve", "--json"]
            command += ["--log-level", "warning"]
        else:
            command = [sys.executable, "-m", "tests.integration.relay_clock_host"]
            command.append(str(self.clock_file))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command += ["--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=self.preexec,
        )
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            try:
                line = self._lines.get(timeout=START)
            except Empty:
                self.stop()
                raise RuntimeError("relay did not start:\n" + "".join(self.output)) from None
            if not line:
                raise RuntimeError("relay exited:\n" + "".join(self.output))
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["event"] == "started":
                self.fingerprint = event["fingerprint"]
                # The token is never on stdout: the relay writes it to a 0600 file.
                if event.get("registration_token_file"):
                    self.registration_token_file = Path(event["registration_token_file"])
                    self.registration_token = self.registration_token_file.read_text().strip()
            elif event["event"] == "metrics-listening":
                self.metrics_url = event["url"]
            elif event["event"] == "livez-listening":
                self.livez_url = event["url"]
            elif event["event"] == "listening":
                self.url = event["url"]
                return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put("")

    def advance_clock(self, seconds: float) -> None:
        """Move the relay's wall clock forward (a relay started with ``clock_file``)."""
        from .relay_clock_host import set_offset

        assert self.clock_file is not None, "this relay runs on the real clock"
        set_offset(self.clock_file, float(self.clock_file.read_text()) + seconds)

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://", 1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=scaled(15))
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
