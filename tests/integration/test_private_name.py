"""`daemon start --private-name`: the relay never sees the machine's name; the
controller learns it over the encrypted pairing (11.16). Real relay, daemon, CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from starmux.identity import IdentityCard

from .daemon_process import DaemonProcess, run_cli, run_json
from .relay_process import RelayProcess

SECRET_NAME = "build-host-7f3q"


def _relay_files_mention(relay: RelayProcess, text: str) -> list[str]:
    return [
        path.name
        for path in relay.data_dir.iterdir()
        if path.is_file() and text.encode() in path.read_bytes()
    ]


def test_the_relay_never_sees_a_private_machine_name(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = tmp_path / "controller"
    token = relay.registration_token or ""
    assert run_cli(controller, "init", "--relay", relay.url, "--token", token).returncode == 0
    daemon = DaemonProcess(
        tmp_path / "box",
        relay.url,
        name=SECRET_NAME,
        extra_args=["--private-name", "--allow-root", str(tmp_path)],
    ).start()
    daemons.append(daemon)
    paired = run_cli(controller, "pair", daemon.pairing_code(), "--yes")
    assert paired.returncode == 0, paired.stderr
    assert f"paired with {SECRET_NAME}" in paired.stdout
    daemon.wait_for("connected to")
    # The controller knows it by its real name, and reaches it by that name.
    listed = run_json(controller, "machines")
    assert [m["name"] for m in listed] == [SECRET_NAME], listed
    ran = run_cli(controller, "run", "--machine", SECRET_NAME, "--cwd", str(tmp_path), "--", "true")
    assert ran.returncode == 0, ran.stderr
    # The relay: neither its registry, nor its log, nor what it tells another
    # controller of the account holds the name.
    assert _relay_files_mention(relay, SECRET_NAME) == []
    assert SECRET_NAME not in "".join(relay.output)

    # The card the relay stores for the machine says only "machine".
    names = _cards_in_registry(relay)
    assert names == ["machine"], names


def _cards_in_registry(relay: RelayProcess) -> list[str]:
    with sqlite3.connect(relay.data_dir / "registry.sqlite3") as db:
        rows = db.execute("SELECT card FROM machines").fetchall()
    return [IdentityCard.decode(bytes(row[0])).name for row in rows]
