"""Pairing and revocation through a real relay, a real daemon process and the CLI."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import websockets

from starmux.client.qr_terminal import find_qr_block, terminal_qr_to_image
from starmux.close_codes import CloseCode
from starmux.home import load_node_keys
from starmux.identity import NodeKeys, Role
from starmux.pairing_code import PairingCode, parse_pairing_code
from starmux.relay_auth import NodeAuth

from ..timeouts import scaled
from .conftest import RelayFactory
from .daemon_process import DaemonProcess, run_cli, run_json
from .node import RelayNode
from .relay_process import RelayProcess


def _controller(tmp_path: Path, relay: RelayProcess, token: str | None = None) -> Path:
    home = tmp_path / "controller"
    token = (relay.registration_token or "") if token is None else token
    result = run_cli(home, "init", "--relay", relay.url, "--token", token, "--name", "laptop")
    assert result.returncode == 0, result.stderr
    return home


def _daemon(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess], name: str = "gpu-box"
) -> DaemonProcess:
    daemon = DaemonProcess(tmp_path / name, relay.url, name=name).start()
    daemons.append(daemon)
    return daemon


def _machines(home: Path) -> list[dict[str, object]]:
    result: list[dict[str, object]] = run_json(home, "machines")
    return result


def _assert_nothing_registered(home: Path) -> None:
    assert _machines(home) == []


def test_pair_by_scanning_the_printed_qr(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    # The controller agent is long-lived (any earlier command started it); starting a
    # Python process is not part of pairing.
    assert run_cli(controller, "controller", "start", "--detach").returncode == 0
    daemon = _daemon(tmp_path, relay, daemons)
    code_text = daemon.pairing_code()
    printed_at = time.monotonic()
    # Decode what the daemon printed on its terminal, as a phone would from a screenshot.
    image = tmp_path / "screenshot.png"
    terminal_qr_to_image(find_qr_block(daemon.output)).save(image)
    paired = run_json(controller, "pair", "--image", str(image), "--yes")
    machines = _machines(controller)
    elapsed = time.monotonic() - printed_at
    assert [(m["name"], m["online"]) for m in machines] == [("gpu-box", True)]
    assert paired["fingerprint"] == machines[0]["fingerprint"]
    assert paired["confirmed_by_machine"] is True
    print(f"\npairing, from the QR printed to the machine online: {elapsed:.2f} s")
    # A budget: on this machine's scale (STARMUX_TEST_TIMEOUT_FACTOR), like every wait.
    assert elapsed < scaled(5.0), f"pairing took {elapsed:.2f}s"
    # Both sides showed the same comparison code.
    daemon.wait_for(rf"paired by controller laptop .*comparison code {paired['comparison_code']}")
    assert parse_pairing_code(code_text).machine_fingerprint == paired["fingerprint"]

    # Files holding keys or state are private.
    for path in [*controller.iterdir(), *daemon.home.iterdir()]:
        if path.suffix in (".key", ".sqlite3") or path.name.endswith(("-wal", "-shm")):
            assert path.stat().st_mode & 0o077 == 0, path
    # No secret in any log: the pairing secret and private keys appear nowhere but in
    # the daemon's deliberate terminal display of the code.
    code = parse_pairing_code(code_text)
    secrets = [base64.urlsafe_b64encode(code.secret).decode().rstrip("=")]
    for key_file in (controller / "controller.key", daemon.home / "machine.key"):
        keys = load_node_keys(key_file)
        secrets += [
            base64.b64encode(keys.signing_seed).decode(),
            base64.b64encode(keys.dh_private).decode(),
            keys.signing_seed.hex(),
        ]
    logs = "".join(daemon.stderr) + "".join(relay.output)
    for secret in secrets:
        assert secret not in logs


def _tampered(code_text: str, **changes: object) -> str:
    code = parse_pairing_code(code_text)
    fields = {
        "relay_url": code.relay_url,
        "relay_fingerprint": code.relay_fingerprint,
        "ticket": code.ticket,
        "machine_fingerprint": code.machine_fingerprint,
        "secret": code.secret,
        **changes,
    }
    return PairingCode(**fields).to_text()  # type: ignore[arg-type]


def test_wrong_fingerprint_is_refused(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    daemon = _daemon(tmp_path, relay, daemons)
    code = _tampered(daemon.pairing_code(), machine_fingerprint=NodeKeys.generate().fingerprint)
    result = run_cli(controller, "pair", code, "--yes")
    assert result.returncode == 2
    assert "not" in result.stderr and "as the code says" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_registered(controller)


def test_wrong_secret_is_refused(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    daemon = _daemon(tmp_path, relay, daemons)
    code = _tampered(daemon.pairing_code(), secret=b"\x07" * 32)
    result = run_cli(controller, "pair", code, "--yes")
    assert result.returncode == 2
    assert "code is wrong or stale" in result.stderr
    daemon.wait_for("pairing attempt failed")
    _assert_nothing_registered(controller)
    # The right code still works afterwards (one failure does not burn the ticket).
    assert run_cli(controller, "pair", daemon.pairing_code(), "--yes").returncode == 0


def test_expired_ticket_is_refused(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory(fake_clock=True)
    controller = _controller(tmp_path, relay)
    daemon = _daemon(tmp_path, relay, daemons)
    code = daemon.pairing_code()
    daemon.stop()  # so it does not replace the ticket with a fresh one
    relay.advance_clock(600.0)  # the default ticket lifetime: expired now, not yet before
    result = run_cli(controller, "pair", code, "--yes")
    assert result.returncode == 2
    assert "expired" in result.stderr
    _assert_nothing_registered(controller)


def test_reused_code_and_other_account_are_refused(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory(args=["--open-registration"])
    controller = _controller(tmp_path, relay, token="")
    daemon = _daemon(tmp_path, relay, daemons)
    code = daemon.pairing_code()
    assert run_cli(controller, "pair", code, "--yes").returncode == 0
    again = run_cli(controller, "pair", code, "--yes")
    assert again.returncode == 2 and "already used" in again.stderr
    other_home = tmp_path / "other"
    assert run_cli(other_home, "init", "--relay", relay.url, "--name", "mallory").returncode == 0
    stolen = run_cli(other_home, "pair", code, "--yes")
    assert stolen.returncode == 2 and "already used" in stolen.stderr
    _assert_nothing_registered(other_home)
    assert len(_machines(controller)) == 1


def test_relay_that_changed_its_key_is_refused(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory()
    controller = _controller(tmp_path, relay)
    relay.kill()
    # Another relay (another key) answers at the same address.
    impostor = relay_factory(data_dir=tmp_path / "impostor", port=relay.port)
    assert impostor.fingerprint != relay.fingerprint
    result = run_cli(controller, "machines")
    assert result.returncode != 0
    assert "relay's key changed" in result.stderr
    assert relay.fingerprint in result.stderr and impostor.fingerprint in result.stderr
    # A daemon of the impostor relay shows a code the controller refuses too.
    daemon = _daemon(tmp_path, impostor, daemons)
    refused = run_cli(controller, "pair", daemon.pairing_code(), "--yes")
    assert refused.returncode == 2
    assert "this code is for the relay" in refused.stderr


def test_revoked_daemon_is_cut_off_and_returns_to_unpaired(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    daemon = _daemon(tmp_path, relay, daemons)
    assert run_cli(controller, "pair", daemon.pairing_code(), "--yes").returncode == 0
    mark = len(daemon.output)
    daemon.wait_for("connected to", after=0)
    old_key = tmp_path / "old-machine.key"
    shutil.copy(daemon.home / "machine.key", old_key)
    result = run_cli(controller, "revoke", "gpu-box", "--yes")
    revoked_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    daemon.wait_for("REVOKED", after=mark, timeout=5)
    assert time.monotonic() - revoked_at < scaled(1.0)
    # It goes back to unpaired with a new identity and a new QR code.
    new_code = parse_pairing_code(daemon.pairing_code(after=mark))
    old_keys = load_node_keys(old_key)
    assert new_code.machine_fingerprint != old_keys.fingerprint
    assert _machines(controller) == []
    # The old identity is refused by the relay for good.
    assert _old_identity_close_code(relay, old_keys) == CloseCode.REVOKED


def _old_identity_close_code(relay: RelayProcess, keys: NodeKeys) -> int:
    import asyncio

    async def attempt() -> int:
        node = RelayNode(Role.MACHINE, keys=keys)
        node.ws = await websockets.connect(relay.url + "/v1/ws", compression=None)
        auth = NodeAuth(keys, node.card, pinned_relay_key=None)
        await node.ws.send(auth.receive_challenge(await node.recv()))
        return await node.expect_close()

    return asyncio.run(attempt())
