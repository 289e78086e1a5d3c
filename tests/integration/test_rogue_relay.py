"""What a relay alone cannot do to a paired daemon (issue 11.8, 13.2): real processes.

A malicious relay (``rogue_relay.py``, holding the real relay's key) says "unpaired",
sends an unsigned REVOKED notice with a forged revocation, and closes with 4003; a
relay with another key answers at the pinned address. The daemon keeps its key, its
controllers and its running session, and works again once the real relay is back.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue

from .cluster import pair, python
from .conftest import RelayFactory
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess

ROGUE = Path(__file__).with_name("rogue_relay.py")
WAIT = 30.0


class RogueRelay:
    def __init__(self, key_file: Path, port: int, modes: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROGUE), str(key_file), str(port), modes],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: Queue[str] = Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next_event() == {"event": "listening"}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def next_event(self) -> dict[str, object]:
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except Empty:
                raise AssertionError("the rogue relay saw nothing in time") from None
            assert line, "the rogue relay exited"
            if line.startswith("{"):
                event = json.loads(line)
                assert isinstance(event, dict)
                return event

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _controllers(home: Path) -> list[bytes]:
    with sqlite3.connect(home / "daemon.sqlite3") as db:
        return [bytes(row[0]) for row in db.execute("SELECT key FROM controllers")]


def test_relay_alone_cannot_unpair_or_revoke_a_daemon(
    tmp_path: Path,
    relay: RelayProcess,
    relay_factory: RelayFactory,
    daemons: list[DaemonProcess],
) -> None:
    paired = pair(tmp_path, relay, daemons)
    daemon = paired.daemon
    key_before = (daemon.home / "machine.key").read_bytes()
    controllers_before = _controllers(daemon.home)
    assert len(controllers_before) == 1
    relay.kill()
    mark = len(daemon.output)
    rogue = RogueRelay(relay.data_dir / "relay.key", relay.port, "unpaired,revoked,refuse-revoked")
    try:
        assert rogue.next_event() == {"event": "connection", "mode": "unpaired"}
        assert rogue.next_event() == {"event": "ticket"}
        assert rogue.next_event() == {"event": "connection", "mode": "revoked"}
        assert rogue.next_event() == {"event": "connection", "mode": "refuse-revoked"}
        daemon.wait_for("refuses this machine as revoked", after=mark, timeout=WAIT)
    finally:
        rogue.stop()
    assert "no controller of this machine signed" in daemon.output[mark:]
    assert "REVOKED by its controller" not in daemon.output
    assert (daemon.home / "machine.key").read_bytes() == key_before
    assert _controllers(daemon.home) == controllers_before
    # The real relay comes back: the same identity is still paired and obeys.
    mark = len(daemon.output)
    relay_factory(data_dir=relay.data_dir, port=relay.port)
    daemon.wait_for("connected to", after=mark, timeout=WAIT)
    session = paired.run(*python("print('still paired')"))
    assert "still paired" in paired.cli("logs", session)


def test_another_relay_key_is_refused_but_sessions_keep_running(
    tmp_path: Path,
    relay: RelayProcess,
    relay_factory: RelayFactory,
    daemons: list[DaemonProcess],
) -> None:
    paired = pair(tmp_path, relay, daemons)
    daemon = paired.daemon
    flag = tmp_path / "go"
    session = paired.run(
        *python(
            "import pathlib, time\n"
            f"flag = pathlib.Path({str(flag)!r})\n"
            "while not flag.exists(): time.sleep(0.05)\n"
            "print('finished after the relay came back')"
        )
    )
    relay.kill()
    mark = len(daemon.output)
    impostor = relay_factory(data_dir=tmp_path / "other-relay-data", port=relay.port)
    daemon.wait_for("REFUSING the relay", after=mark, timeout=WAIT)
    assert "starmux relay repin" in daemon.output[mark:]
    assert daemon.process is not None and daemon.process.poll() is None
    impostor.kill()
    mark = len(daemon.output)
    relay_factory(data_dir=relay.data_dir, port=relay.port)
    daemon.wait_for("connected to", after=mark, timeout=WAIT)
    flag.touch()
    assert "finished after the relay came back" in paired.cli("watch", session, timeout=WAIT)
    assert paired.session(session)["status"] == "succeeded"


def test_relay_repin_trusts_a_deliberately_new_key(
    tmp_path: Path,
    relay: RelayProcess,
    relay_factory: RelayFactory,
    daemons: list[DaemonProcess],
) -> None:
    paired = pair(tmp_path, relay, daemons)
    daemon = paired.daemon
    relay.kill()
    # The relay is reinstalled with a new key but keeps its registry.
    new_dir = tmp_path / "reinstalled"
    new_dir.mkdir(mode=0o700)
    for name in ("registry.sqlite3", "registry.sqlite3-wal", "registry.sqlite3-shm"):
        if (relay.data_dir / name).exists():
            shutil.copy(relay.data_dir / name, new_dir / name)
    mark = len(daemon.output)
    new_relay = relay_factory(data_dir=new_dir, port=relay.port)
    daemon.wait_for("REFUSING the relay", after=mark, timeout=WAIT)
    # A fingerprint that is not the one answering changes nothing.
    wrong = run_cli(daemon.home, "relay", "repin", relay.fingerprint, "--yes")
    assert wrong.returncode == 2, wrong.stderr
    assert f"answers with fingerprint {new_relay.fingerprint}" in wrong.stderr
    # Without --yes it asks, showing both fingerprints; "n" keeps the old pin.
    declined = run_cli(daemon.home, "relay", "repin", new_relay.fingerprint, input_text="n\n")
    assert declined.returncode != 0
    assert f"old fingerprint: {relay.fingerprint}" in declined.stdout
    assert f"new fingerprint: {new_relay.fingerprint}" in declined.stdout
    mark = len(daemon.output)
    for home in (daemon.home, paired.controller):
        done = run_cli(home, "relay", "repin", "-", input_text=new_relay.fingerprint + "\ny\n")
        assert done.returncode == 0, done.stderr
        assert "re-pinned" in done.stdout
    daemon.wait_for("connected to", after=mark, timeout=WAIT)
    session = paired.run(*python("print('through the new relay')"))
    assert "through the new relay" in paired.cli("logs", session)
