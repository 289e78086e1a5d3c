"""Event log append throughput: ``python -m bench.eventlog [--seconds S] [--uvloop] [--quick]``.

Appends 100-byte events to a fresh ``daemon.sqlite3`` in a temporary directory
(WAL, ``synchronous=NORMAL``: the daemon's settings) and prints durable appends/s,
best of 3 runs of about ``--seconds`` each (``--quick``: one run), for:

- one commit per event: a single producer awaiting each append;
- group commit, N producers each awaiting each append (a commit carries ~N events);
- group commit, bursts of ``append_nowait`` awaited together (an output pump).

Every append counted has been committed. Numbers are for this machine and disk;
compare runs, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starmux.daemon.eventlog import EventLog

BODY = bytes(100)
PRODUCERS = (8, 32, 128)
BURSTS = (32, 512)


@dataclass(frozen=True)
class Rate:
    appends_per_s: float
    per_commit: float  # events a commit carried, on average


Work = Callable[[EventLog, Callable[[], bool]], Awaitable[int]]


async def one_by_one(log: EventLog, running: Callable[[], bool]) -> int:
    done = 0
    while running():
        await log.append("bench", BODY, at=0.0)
        done += 1
    return done


def producers(count: int) -> Work:
    async def work(log: EventLog, running: Callable[[], bool]) -> int:
        return sum(await asyncio.gather(*(one_by_one(log, running) for _ in range(count))))

    return work


def bursts(size: int) -> Work:
    async def work(log: EventLog, running: Callable[[], bool]) -> int:
        done = 0
        while running():
            await asyncio.gather(*(log.append_nowait("bench", BODY, at=0.0) for _ in range(size)))
            done += size
        return done

    return work


def until(deadline: float) -> Callable[[], bool]:
    return lambda: time.perf_counter() < deadline


async def measure(path: Path, work: Work, seconds: float, runs: int = 3) -> Rate:
    best = Rate(0.0, 0.0)
    log = await EventLog.open(path)
    try:
        for _ in range(runs):
            commits = log.commits
            start = time.perf_counter()
            done = await work(log, until(start + seconds))
            elapsed = time.perf_counter() - start
            rate = Rate(done / elapsed, done / max(1, log.commits - commits))
            best = max(best, rate, key=lambda r: r.appends_per_s)
    finally:
        await log.close()
    return best


async def run(seconds: float, runs: int = 3) -> None:
    cases: list[tuple[str, Work]] = [("one commit per event (awaited)", one_by_one)]
    cases += [(f"group commit, {n} producers", producers(n)) for n in PRODUCERS]
    cases += [(f"group commit, append_nowait bursts of {n}", bursts(n)) for n in BURSTS]
    baseline = 0.0
    with tempfile.TemporaryDirectory(prefix="starmux-bench-") as tmp:
        for index, (name, work) in enumerate(cases):
            rate = await measure(Path(tmp) / f"daemon-{index}.sqlite3", work, seconds, runs)
            baseline = baseline or rate.appends_per_s
            print(
                f"{name:<42} {rate.appends_per_s:>10,.0f} appends/s"
                f"  {rate.per_commit:>6.1f} events/commit"
                f"  x{rate.appends_per_s / baseline:.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=None, help="each run [1; --quick: 0.05]")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--quick", action="store_true", help="one short run of each; figures mean little"
    )
    args = parser.parse_args()
    seconds = args.seconds or (0.05 if args.quick else 1.0)
    runs = 1 if args.quick else 3
    if args.uvloop:
        import uvloop

        uvloop.run(run(seconds, runs))
    else:
        asyncio.run(run(seconds, runs))


if __name__ == "__main__":
    main()
