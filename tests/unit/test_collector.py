"""The long-lived processes run with the cycle collector settled (starmux.collector).

Checked in a child process: freezing the collector's objects in the test process
would change what later tests' ``gc.collect()`` can free.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from starmux.collector import THRESHOLDS

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import gc, json
    from starmux.node import event_loop

    before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}

    async def main():
        return {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}

    print(json.dumps({"before": before, "serving": event_loop.run(main())}))
    """
)


def test_the_daemons_and_agents_event_loop_settles_the_collector() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["before"]["frozen"] == 0
    assert tuple(seen["before"]["threshold"]) != THRESHOLDS
    assert tuple(seen["serving"]["threshold"]) == THRESHOLDS
    # What existed at start-up (modules, at least) is out of the collector's sight.
    assert seen["serving"]["frozen"] > 1000
