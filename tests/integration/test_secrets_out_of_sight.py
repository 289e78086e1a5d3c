"""Secrets stay out of logs and argv (11.11) and the relay pin can be checked (11.17):
real relay, real daemon and CLI processes."""

from __future__ import annotations

import stat
from pathlib import Path

from starmux.pairing_code import parse_pairing_code

from .conftest import RelayFactory
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess


def test_daemon_writes_the_code_to_a_private_file_when_output_is_not_a_terminal(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(tmp_path / "box", relay.url, print_code=False).start()
    daemons.append(daemon)
    code_file = daemon.home / "pairing-code"
    daemon.wait_for("is in .*pairing-code")
    code = code_file.read_text().strip()
    parsed = parse_pairing_code(code)
    assert stat.S_IMODE(code_file.stat().st_mode) == 0o600
    # Neither the code, its secret nor the QR reach the (journal-like) output.
    output = daemon.output + "".join(daemon.stderr)
    assert "starmux://pair" not in output and "secret=" not in output and "▀" not in output
    assert code.split("secret=")[1].split("&")[0] not in output
    controller = tmp_path / "controller"
    token = relay.registration_token or ""
    # The token from a file, the code from stdin: no warning, nothing secret in argv.
    (tmp_path / "token").write_text(token + "\n")
    init = run_cli(
        controller, "init", "--relay", relay.url, "--token-file", str(tmp_path / "token")
    )
    assert init.returncode == 0, init.stderr
    assert "warning" not in init.stderr
    paired = run_cli(controller, "pair", "-", "--yes", input_text=code + "\n")
    assert paired.returncode == 0, paired.stderr
    assert "warning" not in paired.stderr
    daemon.wait_for("paired by controller")
    assert not code_file.exists()  # a used code is not left lying around
    machines = run_cli(controller, "machines", "--json")
    assert parsed.machine_fingerprint in machines.stdout, machines.stdout


def test_secrets_in_argv_still_work_but_warn(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = tmp_path / "controller"
    init = run_cli(
        controller, "init", "--relay", relay.url, "--token", relay.registration_token or ""
    )
    assert init.returncode == 0, init.stderr
    assert "visible to other users (`ps`)" in init.stderr
    daemon = DaemonProcess(tmp_path / "box", relay.url).start()
    daemons.append(daemon)
    paired = run_cli(controller, "pair", daemon.pairing_code(), "--yes")
    assert paired.returncode == 0, paired.stderr
    assert "the pairing code on the command line is visible" in paired.stderr


def test_init_with_relay_fingerprint_checks_the_pin_instead_of_trusting(
    tmp_path: Path, relay: RelayProcess, relay_factory: RelayFactory
) -> None:
    other = relay_factory()
    home = tmp_path / "controller"
    wrong = run_cli(
        home,
        "init",
        "--relay",
        relay.url,
        "--relay-fingerprint",
        other.fingerprint,
        "--token",
        "-",
        input_text=(relay.registration_token or "") + "\n",
    )
    assert wrong.returncode == 2
    assert f"has fingerprint {relay.fingerprint}, not {other.fingerprint}" in wrong.stderr
    # Nothing was registered: the token is still unused and works now.
    right = run_cli(
        home,
        "init",
        "--relay",
        relay.url,
        "--relay-fingerprint",
        relay.fingerprint,
        "--token",
        "-",
        input_text=(relay.registration_token or "") + "\n",
    )
    assert right.returncode == 0, right.stderr
    assert "account registered" in right.stdout
