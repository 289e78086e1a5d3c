"""Sessions through every real part: chatty-session throughput and approve latency.

    python -m bench.sessions [--lines 200000] [--approvals 50] [--quick]

Starts a relay and a daemon as processes (like ``starmux demo``), pairs a controller
(in this process) and measures:

- **chatty**: one session prints ``--lines`` numbered 100-byte lines as fast as it
  can; every line is durable in the daemon's event log (group commit) and delivered
  through the relay to this controller, which applies it to its SQLite cache.
  Reports lines/s and log events/s from the first to the last line applied.
- **approve**: a session raises ``--approvals`` checkpoints one after another with
  ``starmux checkpoint``; for each, the time from this controller submitting its
  signed approval to the agent process running again (the agent prints the time it
  continued; same machine, same clock). Reports median and p90.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench.sessions.measure import approvals, chatty
from starmux.client.demo import DemoReport, Process, set_up_locally


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--lines", type=int, default=None, help="[200000; --quick: 5000]")
    parser.add_argument("--approvals", type=int, default=None, help="[50; --quick: 2]")
    parser.add_argument("--quick", action="store_true", help="a scaled-down smoke run")
    args = parser.parse_args()
    lines = args.lines or (5_000 if args.quick else 200_000)
    count = args.approvals or (2 if args.quick else 50)
    with tempfile.TemporaryDirectory(prefix="starmux-bench-") as tmp:
        root = Path(tmp)
        processes: list[Process] = []
        try:
            home = await set_up_locally(root, processes, DemoReport(), say=lambda text: None)
            result = await chatty(home, root, lines)
            print(
                f"chatty session: {result['lines']} lines of 100 bytes in "
                f"{result['seconds']:.2f} s = {result['lines_per_s']:,.0f} lines/s "
                f"({result['events']:.0f} log events, {result['events_per_s']:,.0f} events/s)"
                ", durable on the daemon and applied by the controller"
            )
            result = await approvals(home, root, count)
            print(
                f"approve → agent continues: median {result['median_ms']:.1f} ms, "
                f"p90 {result['p90_ms']:.1f} ms, min {result['min_ms']:.1f} ms "
                f"over {result['count']:.0f} checkpoints"
            )
        finally:
            for process in processes:
                await process.stop()


if __name__ == "__main__":
    asyncio.run(main())
