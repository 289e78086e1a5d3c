"""`starmux watch` as a background process whose output a test can wait on."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from ..timeouts import scaled
from .daemon_process import starmux_command


class Watcher:
    def __init__(self, controller: Path, session: str) -> None:
        env = {**os.environ, "STARMUX_HOME": str(controller), "NO_COLOR": "1"}
        self.process = subprocess.Popen(
            starmux_command("watch", session),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[bytes] = []
        self.errors: list[bytes] = []
        self._changed = threading.Condition()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in (
                (self.process.stdout, self.lines),
                (self.process.stderr, self.errors),
            )
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: object, sink: list[bytes]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                sink.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_lines(self, count: int, *, timeout: float = 30.0) -> None:
        """Block until at least ``count`` output lines arrived (or the process ended);
        ``timeout`` in unscaled seconds."""
        deadline = time.monotonic() + scaled(timeout)
        with self._changed:
            while len(self.lines) < count:
                remaining = deadline - time.monotonic()
                # The process may have ended with lines still in the pipe: only once
                # the pumps have read to the end is "too few lines" final.
                if remaining <= 0 or not any(pump.is_alive() for pump in self._pumps):
                    raise AssertionError(
                        f"watch printed {len(self.lines)} lines, expected {count}; stderr:\n"
                        + b"".join(self.errors).decode(errors="replace")
                    )
                self._changed.wait(remaining)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def finish(self, timeout: float = 90.0) -> int:
        """Wait for the watch to exit and for everything it printed to be read."""
        code = self.process.wait(timeout=scaled(timeout))
        for pump in self._pumps:  # they end at the pipes' end of file
            pump.join(scaled(10))
        return code
