"""Commands that show a code and wait for the other device, run as processes:
`starmux devices link` on an owner (a link code), `starmux link --show` on a new
device (a join code)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from starmux.client.qr_terminal import find_qr_block, terminal_qr_to_image

from ..timeouts import COMMAND, START
from .daemon_process import starmux_command

LINK_CODE = re.compile(r"starmux://link/v1\?\S+")
JOIN_CODE = re.compile(r"starmux://join/v1\?\S+")


class ShowsCode:
    """A command that prints a code (a terminal QR and the text) and runs until the
    other device used it: `devices link` on an owner, `link --show` on a new device."""

    def __init__(self, home: Path, args: tuple[str, ...], pattern: re.Pattern[str]) -> None:
        env = {**os.environ, "STARMUX_HOME": str(home), "NO_COLOR": "1"}
        self.process = subprocess.Popen(
            starmux_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pattern = pattern
        self.out: list[str] = []
        self.err: list[str] = []
        self.printed = threading.Event()
        self.code = ""
        self.printed_at = 0.0
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self.err.extend, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.out.append(line)
            match = self.pattern.search(line)
            if match and not self.code:
                self.code = match.group(0)
                self.printed_at = time.monotonic()
                self.printed.set()

    def wait_code(self) -> str:
        if not self.printed.wait(START):
            raise AssertionError("no code printed: " + "".join(self.out + self.err))
        return self.code

    def qr_image(self, path: Path) -> Path:
        terminal_qr_to_image(find_qr_block("".join(self.out)), invert=False).save(path)
        return path

    def finish(self) -> str:
        """Wait for the command to end well; its stdout (``err`` holds all its stderr)."""
        code = self.process.wait(timeout=COMMAND)
        for reader in self._readers:  # the pipes are closed: they drain and end
            reader.join(START)
        assert code == 0, "".join(self.out + self.err)
        return "".join(self.out)


class Inviter(ShowsCode):
    """`starmux devices link` running on an owner until the new device joined."""

    def __init__(self, home: Path, role: str) -> None:
        super().__init__(home, ("devices", "link", "--role", role, "--yes"), LINK_CODE)


class Shower(ShowsCode):
    """`starmux link --show` on a new device (its own home) until an owner adds it."""

    def __init__(self, home: Path, relay_url: str, name: str) -> None:
        args = ("link", "--show", "--relay", relay_url, "--name", name, "--yes", "--json")
        super().__init__(home, args, JOIN_CODE)

    def joined(self) -> dict[str, object]:
        result = json.loads(self.finish().splitlines()[-1])
        assert isinstance(result, dict)
        return result
