"""A real relay whose wall clock the test moves, so nothing waits for time to pass.

    python -m tests.integration.relay_clock_host CLOCK_FILE --port P --data-dir D
        [--open-registration]

The relay runs exactly as ``starmux relay serve --json`` does (same start-up, same
settings from the environment, same JSON lines on stdout), except that its clock is
``time.time()`` plus the offset in seconds written in CLOCK_FILE: a file in the
test's temporary folder, so only the test (never a network client) can move it.
:meth:`RelayProcess.advance_clock` writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from starmux.relay.app import StartupInfo
from starmux.relay.config import load_config
from starmux.relay.server import loop_factory, serve


class FileClock:
    """``time.time()`` plus the offset in a file (read on every call: tests only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> float:
        return time.time() + float(self.path.read_text() or 0)


def set_offset(path: Path, seconds: float) -> None:
    """Write the offset atomically (the relay may read it at any moment)."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(repr(seconds))
    scratch.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clock_file", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--open-registration", action="store_true", default=None)
    args = parser.parse_args()
    if not args.clock_file.exists():
        set_offset(args.clock_file, 0.0)
    config = load_config(
        {
            "port": args.port,
            "data_dir": args.data_dir,
            "open_registration": args.open_registration,
            "log_level": "warning",
        }
    )

    def on_ready(info: StartupInfo) -> None:
        token_file = info.registration_token_file
        started = {
            "event": "started",
            "fingerprint": info.fingerprint,
            "registration_token_file": str(token_file.resolve()) if token_file else None,
            "data_dir": str(config.data_dir),
        }
        print(json.dumps(started), flush=True)

    def on_listening(url: str) -> None:
        print(json.dumps({"event": "listening", "url": url}), flush=True)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(
            serve(
                config,
                on_ready=on_ready,
                on_listening=on_listening,
                clock=FileClock(args.clock_file),
            )
        )


if __name__ == "__main__":
    main()
