"""The systemd user unit: its text (golden), its quoting, installing it."""

from __future__ import annotations

import configparser
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from starmux.daemon.systemd import (
    UNIT_NAME,
    UnitExistsError,
    default_unit_dir,
    enable_instructions,
    exec_line,
    install_user_unit,
    quote_exec_arg,
    unit_text,
)
from starmux.errors import UsageError

PYTHON = "/opt/star tools/py%3/bin/python"
ARGV = [PYTHON, "-m", "starmux.cli", "daemon", "start", "--foreground"]
HOME = Path("/home/ann/star mux")

GOLDEN = """\
# Written by starmux. Keep local changes in a drop-in (systemctl --user edit).
[Unit]
Description=starmux machine daemon

[Service]
Type=simple
ExecStart="/opt/star tools/py%%3/bin/python" -m starmux.cli daemon start --foreground
Environment="STARMUX_HOME=/home/ann/star mux"
Environment="PATH=/opt/star tools/py%%3/bin:/usr/local/bin:/usr/bin:/bin"
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=5
KillMode=mixed
TimeoutStopSec=30
NoNewPrivileges=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes

[Install]
WantedBy=default.target
"""


def test_unit_text_golden() -> None:
    assert unit_text(exec_start=ARGV, home=HOME) == GOLDEN


def test_unit_puts_the_directory_of_starmux_first_on_path() -> None:
    # Sessions and the Claude Code hook call `starmux`; a venv or pipx install has it
    # next to the Python that runs the service, not on the user manager's PATH.
    service = unit_text(exec_start=["/home/ann/.venv/bin/python", "-m", "x"], home=HOME)
    assert "Environment=PATH=/home/ann/.venv/bin:/usr/local/bin:/usr/bin:/bin\n" in service


def test_unit_parses_back_into_its_sections() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(unit_text(exec_start=ARGV, home=HOME, description="my 100% daemon"))
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Unit"]["Description"] == "my 100%% daemon"
    service = parser["Service"]
    assert service["Type"] == "simple"
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "5"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ExecStart"].startswith('"/opt/star tools/py%%3/bin/python" -m ')
    assert parser["Install"]["WantedBy"] == "default.target"


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("plain-arg_1.0", "plain-arg_1.0"),
        ("--relay=wss://r.example:443/v1/ws", "--relay=wss://r.example:443/v1/ws"),
        ("has space", '"has space"'),
        ("100%", "100%%"),
        ("$HOME", '"$$HOME"'),
        ("${HOME}/x", '"$${HOME}/x"'),
        ('Ann\'s "box"', '"Ann\'s \\"box\\""'),
        ("back\\slash", '"back\\\\slash"'),
        (";", '";"'),  # unquoted, a lone ; separates commands
        ("", '""'),
        ("line\nbreak\ttab", '"line\\nbreak\\ttab"'),
        ("bell\x07", '"bell\\x07"'),
        ("naïve", '"naïve"'),
    ],
)
def test_exec_arguments_are_quoted_for_systemd(arg: str, quoted: str) -> None:
    assert quote_exec_arg(arg) == quoted


def test_environment_values_keep_their_dollars() -> None:
    # systemd substitutes $VAR in ExecStart= only, never in Environment=.
    assert quote_exec_arg("STARMUX_HOME=/a $b/%c", expand_env=False) == '"STARMUX_HOME=/a $b/%%c"'


def test_exec_line_refuses_what_systemd_cannot_run() -> None:
    with pytest.raises(UsageError, match="absolute"):
        exec_line(["python3", "-m", "starmux.cli"])
    with pytest.raises(UsageError):
        exec_line([])
    for bad in ['/opt/a"b/python', "/opt/a\\b/python", "/opt/$x/python", "/opt/a\nb"]:
        with pytest.raises(UsageError, match="systemd cannot run"):
            exec_line([bad])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_itself_accepts_the_unit(tmp_path: Path) -> None:
    # An executable at a path with a space and a %, found by systemd only if both
    # are quoted and escaped right; any unknown key or bad escape is reported.
    folder = tmp_path / "star tools" / "py%3"
    folder.mkdir(parents=True)
    executable = folder / "python"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    argv = [str(executable), "-c", "print('hi; there')", ";", "$HOME", 'a "b"\\c', "50%"]
    unit = tmp_path / UNIT_NAME
    unit.write_text(unit_text(exec_start=argv, home=tmp_path / "home dir"))

    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_install_writes_the_unit(tmp_path: Path) -> None:
    unit_dir = tmp_path / "config" / "systemd" / "user"
    path = install_user_unit(exec_start=ARGV, home=HOME, unit_dir=unit_dir)
    assert path == unit_dir / UNIT_NAME
    assert path.read_text() == GOLDEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # no secret in it
    assert [p.name for p in unit_dir.iterdir()] == [UNIT_NAME]  # no temp file left

    # The same unit again is a no-op, not a conflict.
    assert install_user_unit(exec_start=ARGV, home=HOME, unit_dir=unit_dir) == path


def test_install_refuses_a_different_unit_unless_forced(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    path = unit_dir / "mine.service"
    path.write_text("[Service]\nExecStart=/bin/true\n")

    with pytest.raises(UnitExistsError) as caught:
        install_user_unit(exec_start=ARGV, home=HOME, unit_dir=unit_dir, name="mine.service")
    assert caught.value.hint is not None
    assert "--force" in caught.value.hint
    assert path.read_text() == "[Service]\nExecStart=/bin/true\n"

    install_user_unit(
        exec_start=ARGV, home=HOME, unit_dir=unit_dir, name="mine.service", force=True
    )
    assert path.read_text() == GOLDEN


def test_install_refuses_odd_names(tmp_path: Path) -> None:
    for name in ["starmux", "../x.service", ".hidden.service"]:
        with pytest.raises(UsageError):
            install_user_unit(exec_start=ARGV, home=HOME, unit_dir=tmp_path, name=name)


def test_default_unit_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_unit_dir() == tmp_path / "cfg" / "systemd" / "user"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/cfg")  # invalid per XDG: ignored
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_unit_dir() == tmp_path / ".config" / "systemd" / "user"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_unit_dir() == tmp_path / ".config" / "systemd" / "user"


def test_install_without_unit_dir_uses_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = install_user_unit(exec_start=ARGV, home=HOME)
    assert path == tmp_path / "systemd" / "user" / UNIT_NAME
    assert path.exists()


def test_enable_instructions() -> None:
    text = enable_instructions(Path("/x/systemd/user") / UNIT_NAME)
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    assert commands == [
        "systemctl --user daemon-reload",
        f"systemctl --user enable --now {UNIT_NAME}",
        'loginctl enable-linger "$USER"',
        f"journalctl --user -u {UNIT_NAME} -f",
    ]
    assert "other.service" in enable_instructions(Path("/x/other.service"))
