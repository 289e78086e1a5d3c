"""The README's two front-door commands, verbatim, in a fresh copy and virtual env."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..timeouts import scaled

ROOT = Path(__file__).resolve().parents[2]


def _readme_command(name: str) -> str:
    """The command exactly as CI extracts it from the README."""
    result = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_command.py"), name],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _fresh_copy(tmp_path: Path) -> Path:
    """The tracked files only: what a new user gets from a clone."""
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    copy = tmp_path / "starmux"
    for name in filter(None, files):
        source = ROOT / name
        if source.is_symlink():  # starmux/relay -> ../relay etc.: kept as links
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).symlink_to(os.readlink(source))
        elif source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if ".venv" not in p and "/work/venv" not in p
    )
    env["TMPDIR"] = str(tmp_path)
    env["NO_COLOR"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the subprocesses below have their own bounds
def test_demo_command_verbatim(tmp_path: Path) -> None:
    command = _readme_command("demo")
    assert command.endswith("starmux demo")
    copy = _fresh_copy(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=copy,
        input="y\n",
        capture_output=True,
        text=True,
        env=_env(scratch),
        timeout=scaled(900),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "starmux demo: everything worked" in result.stdout
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the subprocesses below have their own bounds
def test_test_command_install_half_verbatim(tmp_path: Path) -> None:
    command = _readme_command("test")
    install, _, run = command.partition(" && .venv/bin/python -m pytest")
    assert run, command  # the command installs, then runs pytest, ruff and mypy
    copy = _fresh_copy(tmp_path)
    result = subprocess.run(
        ["bash", "-c", install],
        cwd=copy,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=scaled(900),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for tool in ("python -m pytest", "ruff", "mypy"):
        check = subprocess.run(
            ["bash", "-c", f".venv/bin/{tool} --version"],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=scaled(120),
        )
        assert check.returncode == 0, (tool, check.stderr)
    collected = subprocess.run(
        [".venv/bin/python", "-m", "pytest", "--collect-only", "-q", "tests/unit"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert " tests collected" in collected.stdout or "tests collected" in collected.stdout
