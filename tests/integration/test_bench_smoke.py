"""Every benchmark suite's ``--quick`` mode, end to end, as ``python -m bench.X``.

The figures of a quick run mean nothing (the machine is shared, the runs are
short); what this proves is that each benchmark still drives the shipped code from
start to finish and prints its figures, so a product change that breaks a benchmark
fails here rather than the next time someone measures. Suites that write a results
file write it to a temporary path: the committed ``bench/RESULTS.md`` is never
touched by a test.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_RESULTS = ROOT / "bench" / "RESULTS.md"
#: Per suite; a hang fails the test instead of the run. Each takes 1-15 s on an idle
#: 2-core machine, several times that when the machine is shared.
TIMEOUT = 300.0

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"

#: suite → (writes a results file, patterns its output must contain: the figures).
SUITES: dict[str, tuple[bool, list[str]]] = {
    "channel": (
        False,
        [
            rf"transport\s+1 KiB encrypt\+decrypt:\s+{NUMBER} msg/s",
            rf"handshake\s+\S+:\s+{NUMBER} completions/s",
        ],
    ),
    "eventlog": (
        False,
        [
            rf"one commit per event \(awaited\)\s+{NUMBER} appends/s",
            rf"group commit, append_nowait bursts of \d+\s+{NUMBER} appends/s",
        ],
    ),
    "sessions": (
        False,
        [
            rf"chatty session: \d+ lines of 100 bytes in {NUMBER} s = {NUMBER} lines/s",
            rf"approve → agent continues: median {NUMBER} ms",
        ],
    ),
    "relay": (
        True,
        [
            rf"\| 1\. throughput, msg/s [^|]*\| {NUMBER} \({NUMBER}\) \| {NUMBER} \({NUMBER}\) \|",
            rf"\| 2\. latency p99, ms [^|]*\| {NUMBER} \({NUMBER}\) \| {NUMBER} \({NUMBER}\) \|",
            rf"\| 3\. RSS per idle connection, KiB [^|]*\| {NUMBER} \| {NUMBER} \|",
        ],
    ),
    "padding": (
        False,
        [
            rf"output chunk 16 KiB\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            r"distinct sizes the relay can see: Padmé \d+, powers of two \d+",
        ],
    ),
    "e2e": (
        True,
        [
            rf"\| 2 × 2 \| events/s delivered, 1 KiB [^|]*\| {NUMBER} \| \*\*{NUMBER}\*\* \|",
            rf"\| 2 × 2 \| latency p99, ms [^|]*\| {NUMBER} \| \*\*{NUMBER}\*\* \|",
            rf"\| 2 × 2 \| throughput \| {NUMBER} / {NUMBER} / {NUMBER} \(sum {NUMBER}\)",
            rf"\| 1 × 1 \| approve → blocked process continues[^|]*\|[^|]*"
            rf"\| \*\*{NUMBER} / {NUMBER}\*\*",
        ],
    ),
    "storm": (
        True,
        [
            r"\| graceful \(SIGTERM\) \| shipped \|[^|]*\| \*\*[0-9.]+ s\*\* \|",
            r"\| crash \(SIGKILL\) \| shipped \|[^|]*\| \*\*[0-9.]+ s\*\* \|",
            r"\*\*(\d+)/\1 machines live \(KK \+ resync\) [0-9.]+ s\*\*",
        ],
    ),
    "cluster": (
        True,
        [
            rf"\| one node \| {NUMBER} \(1\.00×\) \| {NUMBER} / {NUMBER} \|",
            rf"\| split across two nodes \| {NUMBER} \({NUMBER}×\) \| {NUMBER} / {NUMBER} \|",
            r"\| SIGKILL \| [0-9,]+ \| \*\*[0-9.]+ s\*\* \|",
            r"Load average before / after: ",
        ],
    ),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


@pytest.mark.parametrize("suite", list(SUITES))
def test_quick_run_prints_its_figures(suite: str, tmp_path: Path) -> None:
    writes, patterns = SUITES[suite]
    results = tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", f"bench.{suite}", "--quick"]
    if writes:
        command += ["--write", "--results", str(results)]
    committed = _digest(COMMITTED_RESULTS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    output = done.stdout
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output}\n{done.stderr[-4000:]}"
    for pattern in patterns:
        assert re.search(pattern, output), f"no figure matching {pattern!r} in:\n{output}"
    if writes:
        written = results.read_text()
        for pattern in patterns:
            assert re.search(pattern, written), f"{pattern!r} not in the results file"
        assert "- command: `python -m bench." in written
    assert _digest(COMMITTED_RESULTS) == committed, "a quick run rewrote bench/RESULTS.md"
