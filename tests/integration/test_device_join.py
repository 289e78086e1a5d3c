"""The reverse direction of linking, and device presence, through real processes.

A new device shows its own join code (`starmux link --show`, as the browser will);
an owner adds it by the pasted code or by a photo of the QR (`starmux devices add`).
Then the new device works within the role the owner picked, and every online
device sees which others are online (`starmux devices`, and PRESENCE frames live).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

from starmux.client.store import KEY_FILE as CONTROLLER_KEY_FILE
from starmux.control import CONTROL, Presence
from starmux.frames import FrameType
from starmux.home import load_node_keys
from starmux.identity import Role

from ..timeouts import EVENT, START, poll, scaled
from .cluster import Paired
from .daemon_process import run_cli
from .node import RelayNode
from .relay_process import RelayProcess
from .shown_codes import Shower
from .test_checkpoints import _pending, agent
from .test_checkpoints import paired as paired  # the fixture
from .test_devices import device
from .watcher import Watcher


def add(owner: Paired, home: Path, name: str, role: str, *, by_image: bool) -> float:
    """Link a new device the reverse way; seconds from its code shown to its machine list."""
    shower = Shower(home, owner.relay.url, name)
    code = shower.wait_code()
    if by_image:
        image = shower.qr_image(home.parent / f"{name}-join.png")
        what = ["--image", str(image)]
    else:
        what = [code]
    added = run_cli(owner.controller, "devices", "add", *what, "--role", role, "--yes")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"added {name} ") and f"as {role}" in added.stdout
    joined = shower.joined()
    assert joined == {"owner": "laptop", "role": role, "devices": joined["devices"], "machines": 1}
    # What the new device waited for, as it went (the browser shows the same steps).
    assert "waiting for the owner to confirm and add this device" in "".join(shower.err)
    machines = run_cli(home, "machines", "--json")
    assert machines.returncode == 0 and owner.daemon.name in machines.stdout, machines.stderr
    return time.monotonic() - shower.printed_at


def test_an_owner_adds_a_device_that_shows_its_code_and_its_role_holds(
    paired: Paired, tmp_path: Path
) -> None:
    b_home, c_home = tmp_path / "browser", tmp_path / "kiosk"
    pasted = add(paired, b_home, "browser", "viewer", by_image=False)
    scanned = add(paired, c_home, "kiosk", "operator", by_image=True)
    listed = paired.json("devices")
    assert isinstance(listed, list)
    assert {(d["name"], d["role"], d["added_by"]) for d in listed} == {
        ("laptop", "owner", "laptop"),
        ("browser", "viewer", "laptop"),
        ("kiosk", "operator", "laptop"),
    }
    # A join code is single-use: the same code cannot add anyone again.
    used = str(tmp_path / "kiosk-join.png")
    again = run_cli(paired.controller, "devices", "add", "--image", used, "--yes")
    assert again.returncode != 0 and "already used" in again.stderr, again.stderr

    # B (viewer) watches a live session; its approve is refused, the checkpoint stays.
    b = device(paired, b_home)
    session = paired.run(*agent("Ship it?", "--timeout", "120"))
    checkpoint = str(_pending(b, title="Ship it?")["id"])
    refused = run_cli(b_home, "approve", checkpoint)
    assert refused.returncode != 0 and "does not allow approve" in refused.stderr, refused.stderr
    assert b.session(session)["status"] == "waiting_approval"
    watcher = Watcher(b_home, session)
    # C (operator) approves; B's live watch sees the agent go on to its end.
    assert run_cli(c_home, "approve", checkpoint).returncode == 0
    assert watcher.finish() == 0, b"".join(watcher.errors)
    report = b"".join(watcher.lines).decode()
    assert "exit 0" in report and '"decision": "approved"' in report, report
    print(f"\njoin (code shown → machines listed): pasted {pasted:.2f} s, QR {scanned:.2f} s")


class PresenceListener:
    """A device's own relay connection (its keys, nothing else running with them),
    recording the PRESENCE frames the relay sends it, as they come."""

    def __init__(self, relay: RelayProcess, home: Path) -> None:
        self.node = RelayNode(Role.CONTROLLER, "kiosk", load_node_keys(home / CONTROLLER_KEY_FILE))
        self.seen: list[tuple[float, bytes, bool]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._listen(relay.url),))
        self._thread.start()
        assert self._ready.wait(START), "the listener did not connect"

    async def _listen(self, url: str) -> None:
        await self.node.connect(url)
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    frame = await self.node.recv_type(FrameType.PRESENCE, timeout=0.2 / scaled(1))
                except TimeoutError:
                    continue
                online = CONTROL.decode_as(frame.body, Presence).online
                self.seen.append((time.monotonic(), frame.peer, online))
        finally:
            await self.node.close()

    def last(self, key: bytes) -> bool | None:
        states = [online for _, peer, online in self.seen if peer == key]
        return states[-1] if states else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(EVENT)


def _presence(owner: Paired, name: str) -> dict[str, object]:
    rows = owner.json("devices")
    assert isinstance(rows, list)
    return next(dict(r) for r in rows if r["name"] == name)


def test_every_device_sees_which_others_are_online(
    paired: Paired, tmp_path: Path, relay: RelayProcess
) -> None:
    b_home, c_home = tmp_path / "browser", tmp_path / "kiosk"
    add(paired, b_home, "browser", "viewer", by_image=False)
    add(paired, c_home, "kiosk", "viewer", by_image=False)
    b_key = load_node_keys(b_home / CONTROLLER_KEY_FILE).sign_public
    # Each new device listed its machines, so its controller agent runs and is online.
    row = _presence(paired, "browser")
    assert row["online"] is True and isinstance(row["last_seen"], float)
    # C's own connection, with its keys, listens (its agent steps aside first).
    assert run_cli(c_home, "controller", "stop").returncode == 0
    listener = PresenceListener(relay, c_home)
    try:
        # The relay greets C with who is online, B among them.
        poll(lambda: listener.last(b_key) or None, within=10, what="B online, live, at C")
        assert _presence(paired, "kiosk")["online"] is True

        gone_at, wall = time.monotonic(), time.time()  # B stops: its connection closes
        stopped = run_cli(b_home, "controller", "stop")
        assert stopped.returncode == 0, stopped.stderr
        poll(lambda: listener.last(b_key) is False or None, within=10, what="B offline at C")
        live = next(t for t, peer, online in listener.seen if peer == b_key and not online)
        row = _presence(paired, "browser")
        shown_offline = time.monotonic() - gone_at
        assert row["online"] is False
        assert isinstance(row["last_seen"], float) and abs(row["last_seen"] - wall) < scaled(5)
        text = paired.cli("devices")
        assert re.search(r"browser .* offline \(last seen ", text), text
        print(
            f"\n`controller stop` on B started → B offline at C (live notice): "
            f"{live - gone_at:.2f} s; in A's `starmux devices`: {shown_offline:.2f} s "
            "(two CLI runs included)"
        )
        assert live - gone_at < scaled(2.0)
    finally:
        listener.close()
