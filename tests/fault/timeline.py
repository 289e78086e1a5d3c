"""The chatty session of a fault test, and what happened when.

- :func:`chatty_script`: a session printing numbered lines at a steady pace, writing
  the last line it printed to a file (so the test knows where the daemon is).
- :func:`measure_recovery`: how long after a fault ended the controller's ``watch``
  printed again, reached the line the session had printed when the fault ended, and
  came back to within a second of the live stream.
- :class:`Timeline`: the stream's progress, and what the daemon and the watching
  controller said, stamped with seconds since the test started; :func:`report`
  prints it and saves it as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..integration.daemon_process import DaemonProcess
from ..integration.watcher import Watcher

SAMPLE_EVERY = 0.5


def numbered_line(i: int, pad: int) -> str:
    """Line ``i`` of a chatty session (without its newline)."""
    return f"{i} {'x' * pad}" if pad else str(i)


def chatty_script(lines: int, rate: int, pad: int = 0) -> str:
    """Python code printing ``numbered_line(1..lines, pad)`` at ``rate`` lines/s;
    argv[1]: the file where it keeps the number of the last line printed. It stops
    early, after the line written in ``argv[1] + ".stop"`` (:meth:`Stream.end_at`):
    a test whose faults are over need not wait out the rest of the output."""
    tail = f" {'x' * pad}" if pad else ""
    return f"""
import os, sys, time
progress = sys.argv[1]
last = {lines}
start = time.monotonic()
for i in range(1, {lines} + 1):
    print(str(i) + {tail!r}, flush=True)
    if i % 20 == 0 or i == last:
        with open(progress + ".tmp", "w") as f:
            f.write(str(i))
        os.replace(progress + ".tmp", progress)
        if os.path.exists(progress + ".stop"):
            with open(progress + ".stop") as f:
                last = min(last, int(f.read()))
        if i >= last:
            break
        pause = start + i / {rate} - time.monotonic()
        if pause > 0:
            time.sleep(pause)
"""


def mismatch(lines: list[bytes], expected: int) -> str:
    """How watched lines differ from 1..expected (a 20,000-item diff helps nobody)."""
    heads = [line.split(b" ", 1)[0].strip() for line in lines]
    numbers = [int(head) if head.isdigit() else -1 for head in heads]
    first_bad = next((i for i, n in enumerate(numbers) if n != i + 1), len(numbers))
    repeated = len(numbers) - len(set(numbers))
    missing = sorted(set(range(1, expected + 1)) - set(numbers))
    return (
        f"watch printed {len(lines)} lines, first wrong at index {first_bad} "
        f"({lines[max(0, first_bad - 1) : first_bad + 2]!r} around it); {repeated} repeated; "
        f"{len(missing)} missing (first: {missing[:5]})"
    )


@dataclass
class Stream:
    """A session printing numbered lines (and its progress to a file) and its watcher."""

    watcher: Watcher
    progress_file: Path
    rate: float  # lines per second the session prints

    def printed(self) -> int:
        """The last line the session process has printed (updated every few lines)."""
        try:
            return int(self.progress_file.read_text() or 0)
        except FileNotFoundError:
            return 0

    def end_at(self, seconds: float = 1.0) -> int:
        """Have the session print ``seconds`` more of output, then end; returns its
        last line. The script reads the request every 20 lines, and ``printed()`` is
        at most 20 lines old, so the line asked for is still ahead of it."""
        last = self.printed() + max(40, int(seconds * self.rate))
        stop = self.progress_file.with_name(self.progress_file.name + ".stop")
        staged = stop.with_name(stop.name + ".tmp")
        staged.write_text(str(last))
        staged.replace(stop)
        return last

    def watched(self) -> int:
        """Lines the controller's ``watch`` printed (they are 1..n; checked at the end)."""
        return len(self.watcher.lines)


@dataclass(frozen=True)
class Recovery:
    resumed: float | None  # first new watched line, seconds after the fault ended
    caught_up: float | None  # watched the line printed when the fault ended
    live: float | None  # less than a second of output behind the session

    def as_dict(self) -> dict[str, float | None]:
        return {
            "resumed_s": _round(self.resumed),
            "caught_up_s": _round(self.caught_up),
            "live_s": _round(self.live),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def measure_recovery(stream: Stream, ended_at: float, *, limit: float) -> Recovery:
    """Poll the stream from ``ended_at`` (monotonic) for at most ``limit`` seconds."""
    target = stream.printed()
    before = stream.watched()
    resumed = caught_up = live = None
    while time.monotonic() < ended_at + limit and (caught_up is None or live is None):
        now = time.monotonic()
        watched = stream.watched()
        if resumed is None and watched > before:
            resumed = now - ended_at
        if caught_up is None and watched >= target:
            caught_up = now - ended_at
            resumed = caught_up if resumed is None else resumed  # it was not behind
        if live is None and stream.printed() - watched <= stream.rate:
            live = now - ended_at
        time.sleep(0.02)
    return Recovery(resumed, caught_up, live)


class Timeline:
    def __init__(self, stream: Stream, daemon: DaemonProcess) -> None:
        self.stream = stream
        self.daemon = daemon
        self.started = time.monotonic()
        self.events: list[tuple[float, str, str]] = []
        self.samples: list[tuple[float, int, int]] = []  # (t, printed, watched)
        self._seen_daemon = len(daemon.stdout)
        self._seen_watch = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def start(self) -> Timeline:
        self._thread.start()
        return self

    def mark(self, what: str) -> None:
        self.events.append((self.now(), "test", what))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._collect()

    def _collect(self) -> None:
        now = self.now()
        daemon_lines = self.daemon.stdout[self._seen_daemon :]
        self._seen_daemon += len(daemon_lines)
        self.events += [(now, "daemon", line.rstrip()) for line in daemon_lines]
        watch_lines = self.stream.watcher.errors[self._seen_watch :]
        self._seen_watch += len(watch_lines)
        self.events += [
            (now, "watch", line.decode(errors="replace").rstrip()) for line in watch_lines
        ]

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.wait(0.1):
            self._collect()
            if self.now() >= next_sample:
                self.samples.append((self.now(), self.stream.printed(), self.stream.watched()))
                next_sample = self.now() + SAMPLE_EVERY

    def lag_between(self, start: float, end: float) -> dict[str, float]:
        """Max and mean lag (lines printed but not yet watched) in [start, end]."""
        lags = [printed - watched for t, printed, watched in self.samples if start <= t <= end]
        if not lags:
            return {"max_lag_lines": 0, "mean_lag_lines": 0}
        return {"max_lag_lines": max(lags), "mean_lag_lines": round(sum(lags) / len(lags), 1)}


def report(figures: dict[str, Any], path: Path) -> None:
    """Save ``figures`` as JSON and print the summary and the events to stderr."""
    path.write_text(json.dumps(figures, indent=2))
    out = sys.stderr
    print(f"\nstarmux network-fault figures (full timeline: {path})", file=out)
    for name, value in figures.items():
        if isinstance(value, dict):
            print(f"  {name}: {json.dumps(value)}", file=out)
    for t, source, text in figures.get("events", []):
        print(f"  {t:7.2f} {source:6} {text}", file=out)
