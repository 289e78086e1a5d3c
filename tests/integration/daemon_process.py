"""Real ``starmux`` processes for integration tests: the daemon and CLI commands."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..timeouts import scaled

CODE_PATTERN = re.compile(r"starmux://pair/v1\?\S+")


def starmux_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "starmux.cli", *args]


def run_cli(
    home: Path, *args: str, timeout: float = 60.0, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``starmux ARGS`` with ``home``; ``timeout`` in unscaled seconds."""
    env = {**os.environ, "STARMUX_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(
        starmux_command(*args),
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(timeout),
        input=input_text,
    )


def run_json(home: Path, *args: str) -> Any:
    result = run_cli(home, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@dataclass
class DaemonProcess:
    home: Path
    relay_url: str | None
    name: str = "gpu-box"
    extra_args: list[str] = field(default_factory=list)
    #: print the code although stdout is a pipe (else it goes to HOME/pairing-code)
    print_code: bool = True
    #: give the daemon a stdin pipe (to answer its questions); else it inherits none
    with_stdin: bool = False
    process: subprocess.Popen[str] | None = None
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> DaemonProcess:
        args = ["daemon", "start", "--name", self.name]
        if self.relay_url:
            args += ["--relay", self.relay_url]
        args += self.extra_args
        if self.print_code:
            args.append("--print-code")
        env = {**os.environ, "STARMUX_HOME": str(self.home), "NO_COLOR": "1"}
        self.process = subprocess.Popen(
            starmux_command(*args),
            stdin=subprocess.PIPE if self.with_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for stream, sink in (
            (self.process.stdout, self.stdout),
            (self.process.stderr, self.stderr),
        ):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        return self

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._changed:
                sink.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.stdout)

    def wait_for(
        self, pattern: str | re.Pattern[str], *, timeout: float = 20.0, after: int = 0
    ) -> re.Match[str]:
        """Block until ``pattern`` appears in stdout past character ``after``
        (``timeout`` in unscaled seconds)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + scaled(timeout)
        with self._changed:
            while True:
                match = regex.search("".join(self.stdout), after)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if remaining <= 0 or exited:
                    raise AssertionError(
                        f"{regex.pattern!r} not seen in daemon output"
                        f"{' (daemon exited)' if exited else ''}:\n{''.join(self.stdout)}\n"
                        f"stderr:\n{''.join(self.stderr)}"
                    )
                self._changed.wait(remaining)

    def answer(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def pairing_code(self, *, after: int = 0) -> str:
        return self.wait_for(CODE_PATTERN, after=after).group(0)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
