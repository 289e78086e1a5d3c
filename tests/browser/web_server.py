"""``starmux web`` in a subprocess on a real port, restartable on the same port.

The same port matters: a browser keeps a service worker and IndexedDB per origin,
so a restart on another port would be a different app, not new code for this one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..integration.relay_process import free_port
from ..timeouts import COMMAND, START, scaled

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"


def copy_web_root(target: Path) -> Path:
    """A copy of the checkout's web/ to change (npm's web/node_modules left out; the
    vendored web/vendor/node_modules kept)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return ["node_modules"] if Path(folder) == WEB and "node_modules" in names else []

    shutil.copytree(WEB, target, ignore=ignore, symlinks=False)
    return target


def print_hash(web_root: Path | None = None) -> str:
    command = [sys.executable, "-m", "starmux.cli", "web", "--print-hash"]
    if web_root is not None:
        command += ["--web-root", str(web_root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND, check=True)
    return done.stdout.strip()


@dataclass
class WebServer:
    home: Path
    web_root: Path | None = None
    port: int = field(default_factory=free_port)
    relays: tuple[str, ...] = ()
    process: subprocess.Popen[str] | None = None
    url: str = ""
    hash: str = ""

    def start(self) -> WebServer:
        command = [sys.executable, "-m", "starmux.cli", "web", "--json", "--port", str(self.port)]
        command += ["--home", str(self.home)]
        if self.web_root is not None:
            command += ["--web-root", str(self.web_root)]
        for relay in self.relays:
            command += ["--relay", relay]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        assert self.process.stdout is not None
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=START):
                self.stop()
                raise RuntimeError("starmux web did not start")
        line = self.process.stdout.readline()
        if not line:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"starmux web exited: {stderr}")
        facts = json.loads(line)
        self.url, self.hash = facts["url"], facts["hash"]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=scaled(15))
        self.process = None
