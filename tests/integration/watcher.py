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
        for stream, sink in ((self.process.stdout, self.lines), (self.process.stderr, self.errors)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

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
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"watch printed {len(self.lines)} lines, expected {count}; stderr:\n"
                        + b"".join(self.errors).decode(errors="replace")
                    )
                self._changed.wait(remaining)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def finish(self, timeout: float = 90.0) -> int:
        code = self.process.wait(timeout=scaled(timeout))
        with self._changed:  # let the pump threads drain
            self._changed.wait_for(lambda: True, timeout=0.1)
        return code
