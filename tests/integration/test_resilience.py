"""Nothing lost, nothing twice: relay kills, controller restarts, daemon crashes."""

from __future__ import annotations

import json
from pathlib import Path

from .cluster import pair, python
from .conftest import RelayFactory
from .daemon_process import DaemonProcess, run_cli
from .watcher import Watcher

COUNTER = (
    "import time\n"
    "for i in range(1, 10001):\n"
    "    print(i, flush=True)\n"
    "    if i % 400 == 0:\n"
    "        time.sleep(0.1)\n"
)


def test_ten_thousand_lines_survive_relay_kills_and_a_controller_restart(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory()
    paired = pair(tmp_path, relay, daemons)
    session = paired.run(*python(COUNTER), title="counter")

    first = Watcher(paired.controller, session)
    first.wait_lines(100)
    relay.kill()  # 1st relay crash
    relay = relay_factory(data_dir=relay.data_dir, port=relay.port)
    first.wait_lines(len(first.lines) + 100)  # it reconnected and resynced
    first.kill()  # the controller process dies too

    second = Watcher(paired.controller, session)
    second.wait_lines(len(first.lines))
    relay.kill()  # 2nd relay crash
    relay = relay_factory(data_dir=relay.data_dir, port=relay.port)
    assert second.finish() == 0, b"".join(second.errors).decode(errors="replace")

    expected = [f"{i}\n".encode() for i in range(1, 10001)]
    assert second.lines == expected  # past output, then live: no gap, no repeat
    logs = run_cli(paired.controller, "logs", session)
    assert logs.stdout.splitlines() == [str(i) for i in range(1, 10001)]
    assert paired.session(session)["status"] == "succeeded"


def test_daemon_crash_marks_the_session_lost(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory()
    paired = pair(tmp_path, relay, daemons)
    session = paired.run(*python("print('started', flush=True)\nimport time\ntime.sleep(120)"))
    watcher = Watcher(paired.controller, session)
    watcher.wait_lines(1)
    watcher.kill()
    paired.daemon.kill()
    restarted = DaemonProcess(
        paired.daemon.home,
        None,
        name=paired.daemon.name,
        extra_args=["--allow-root", str(tmp_path)],
    ).start()
    daemons.append(restarted)
    restarted.wait_for(f"session {session} was lost")
    restarted.wait_for("connected to")
    row = paired.session(session)
    assert row["status"] == "lost"
    assert run_cli(paired.controller, "logs", session).stdout == "started\n"
    # The orphaned process was stopped: its pid no longer runs our session.
    listing = json.loads(paired.cli("sessions", "--json"))
    assert [r["status"] for r in listing if r["id"] == session] == ["lost"]
