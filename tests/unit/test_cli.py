"""The ``starmux`` entry point, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from starmux.cli import main

from ..timeouts import COMMAND

SCRIPT = Path(sys.executable).with_name("starmux")
TIMEOUT = COMMAND  # a hang (say, a server that started after all) fails the test


def starmux_command() -> list[str]:
    """The installed entry point next to this interpreter, else the module."""
    if SCRIPT.exists():
        return [str(SCRIPT)]
    return [sys.executable, "-m", "starmux.cli"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STARMUX_")}
    clean["STARMUX_HOME"] = str(tmp_path / "home")
    clean["NO_COLOR"] = "1"
    return clean


def run(
    args: list[str], env: dict[str, str], cwd: Path, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*starmux_command(), *args],
        env={**env, **extra_env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_entry_point_is_installed() -> None:
    assert SCRIPT.exists(), f"no starmux script next to {sys.executable}"


def test_version(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["--version"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"starmux, version {version('starmux')}\n"
    assert result.stderr == ""


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(env: dict[str, str], tmp_path: Path, flag: str) -> None:
    result = run([flag], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: starmux [OPTIONS] COMMAND [ARGS]...")
    assert "Delegate, watch and approve agent work" in result.stdout
    for expected in ("--version", "--debug", "relay"):
        assert expected in result.stdout
    assert result.stderr == ""


def test_relay_help_lists_serve(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["relay", "--help"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: starmux relay [OPTIONS] COMMAND [ARGS]...")
    commands = result.stdout.split("Commands:", 1)[1]
    assert any(line.split()[:1] == ["serve"] for line in commands.splitlines())


def test_relay_serve_help(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["relay", "serve", "--help"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--data-dir", "--config"):
        assert option in result.stdout


def test_invalid_config_value_is_a_clean_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["relay", "serve"], env, tmp_path, STARMUX_RELAY_PORT="notaport")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "notaport" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    # Config is read before anything else happens: no data directory was created.
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["--debug", "relay", "serve"], env, tmp_path, STARMUX_RELAY_PORT="notaport")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "ConfigError" in result.stderr


def test_unknown_command(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["frobnicate"], env, tmp_path)
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert "Traceback" not in result.stderr


def test_relay_help_loads_no_client_or_daemon_code(env: dict[str, str], tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        import starmux.cli
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = starmux.cli.main(["relay", "--help"])
        print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted(sys.modules)}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["code"] == 0
    assert "serve" in report["help"]
    # The relay group was really loaded, so the check means something.
    assert "starmux.relay.cli" in report["modules"]
    assert not any(
        name.startswith(("starmux.client", "starmux.daemon")) for name in report["modules"]
    )
    # Nothing is imported under the generic top-level names (python-daemon owns `daemon`).
    assert not {"relay", "client", "daemon"} & {name.split(".")[0] for name in report["modules"]}


def test_main_returns_the_exit_code_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STARMUX_RELAY_PORT", "notaport")
    monkeypatch.delenv("STARMUX_DEBUG", raising=False)
    assert main(["relay", "serve"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: invalid value 'notaport'")
    assert main(["--version"]) == 0


def test_a_reader_that_left_ends_the_command_quietly(env: dict[str, str], tmp_path: Path) -> None:
    # As `starmux watch ID | head` once head has read enough: the pipe's reader is
    # gone before the first write, so every write fails with EPIPE. click turns that
    # into exit status 1 without a word; no "unexpected error" from our main.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*starmux_command(), "--help"],
            env=env,
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")


@pytest.mark.parametrize("open_registration", [True, False])
def test_relay_announces_open_registration_at_start(
    env: dict[str, str], tmp_path: Path, open_registration: bool
) -> None:
    """Open registration lets anyone create an account: the relay says so on start."""
    args = ["relay", "serve", "--port", "0", "--data-dir", str(tmp_path / "relay")]
    if open_registration:
        args.append("--open-registration")
    server = subprocess.Popen(
        [*starmux_command(), *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:  # up to "listening": every start-up line is out
            if line.startswith("listening on"):
                break
        else:
            pytest.fail("the relay ended before listening")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=TIMEOUT)
    assert ("registration is OPEN" in stderr) is open_registration, stderr
