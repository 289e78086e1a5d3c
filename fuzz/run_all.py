"""Run every fuzz harness for a bounded number of inputs; exit 1 if any crashed.

Each harness runs in its own process (libFuzzer owns the process and exits it).
A crash leaves its input in ``tests/data/fuzz/crashers/<name>/`` for the
regression test; libFuzzer's own artifacts go to a temporary folder.

    python fuzz/run_all.py [--runs N] [--jobs J] [NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz import HARNESSES
from fuzz.harness import KNOWN_BUG_SEEN

HERE = Path(__file__).resolve().parent

#: What CI runs: the four harnesses, one after another, take about 35 s on a busy 2-core box.
DEFAULT_RUNS = 150_000
#: One input taking longer than this (seconds) is a hang, reported as a crash.
INPUT_TIMEOUT = 10


@dataclass(frozen=True)
class Outcome:
    name: str
    returncode: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def known_bugs(self) -> list[str]:
        return [
            line.removeprefix(KNOWN_BUG_SEEN).strip()
            for line in self.output.splitlines()
            if line.startswith(KNOWN_BUG_SEEN)
        ]


def run_one(name: str, runs: int, artifacts: Path, extra: list[str]) -> Outcome:
    command = [
        sys.executable,
        str(HERE / f"{name}.py"),
        f"-atheris_runs={runs}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-artifact_prefix={artifacts}/{name}-",
        *extra,
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    return Outcome(name, result.returncode, time.monotonic() - started, result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {HARNESSES}")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="inputs per harness")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run at once")
    parser.add_argument(
        "--libfuzzer", action="append", default=[], metavar="FLAG", help="e.g. -max_len=65599"
    )
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harness {sorted(unknown)}; choose from {HARNESSES}")
    names = args.names or list(HARNESSES)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="starmux-fuzz-") as artifacts,
        ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool,
    ):
        outcomes = list(
            pool.map(lambda n: run_one(n, args.runs, Path(artifacts), args.libfuzzer), names)
        )
    for outcome in outcomes:
        if not outcome.ok:
            print(f"--- {outcome.name} output (last 60 lines) ---")
            print("\n".join(outcome.output.splitlines()[-60:]))
    for outcome in outcomes:
        verdict = "ok" if outcome.ok else f"CRASHED (exit {outcome.returncode})"
        print(f"{outcome.name:<22} {args.runs} runs  {outcome.seconds:6.1f} s  {verdict}")
        for summary in outcome.known_bugs:
            print(f"    hit a known bug (not a failure until its fix lands): {summary}")
    print(f"total {time.monotonic() - started:.1f} s")
    failed = [outcome.name for outcome in outcomes if not outcome.ok]
    if failed:
        print(
            f"crashes in {', '.join(failed)}: inputs saved in tests/data/fuzz/crashers/<name>/; "
            "replay them with pytest tests/unit/test_fuzz_regressions.py"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
