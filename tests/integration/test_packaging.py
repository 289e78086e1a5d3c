"""The built wheel installs only the ``starmux`` import name (DESIGN.md section 1).

python-daemon installs a top-level ``daemon`` package; PyPI also has distributions
named ``relay`` and ``client``. Built and installed for real, beside python-daemon,
in a fresh virtual environment: both import, and neither shadows the other.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


SERVED_FOLDERS = ("app", "icons", "proto", "vendor")
SERVED_FILES = ("index.html", "sw.js", "manifest.webmanifest")
TOOLING = ("package.json", "package-lock.json", "tools/", "test/", "node_modules/")


def _assert_ships_the_web_controller(names: list[str]) -> None:
    """The wheel carries every file web/ serves (pip install needs no Node): the app's
    shell, screens, icons, service worker and manifest as well as the protocol and the
    vendored code; not its tooling."""
    web = ROOT / "web"
    for folder in SERVED_FOLDERS:
        files = [path for path in (web / folder).rglob("*") if path.is_file()]
        assert files, f"web/{folder} is empty: the check would prove nothing"
        for path in files:
            assert f"starmux/web/{path.relative_to(web)}" in names, f"not in the wheel: {path}"
    for name in SERVED_FILES:
        assert (web / name).is_file(), f"web/{name} is missing from the source tree"
        assert f"starmux/web/{name}" in names, f"not in the wheel: web/{name}"
    for left_out in TOOLING:
        assert not any(name.startswith(f"starmux/web/{left_out}") for name in names), left_out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_holds_only_starmux_and_lives_beside_python_daemon(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("starmux-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"starmux"}, tops
    for role in ("relay", "daemon", "client"):
        assert f"starmux/{role}/__init__.py" in names  # the role really is inside
    assert "starmux/relay/migrations/001_init.sql" in names
    _assert_ships_the_web_controller(names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    # python-daemon first, then starmux: the order that used to overwrite daemon/__init__.py.
    for requirement in ("python-daemon", str(wheel)):
        subprocess.run(
            [python, "-m", "pip", "install", "-q", requirement], check=True, capture_output=True
        )
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    probe = subprocess.run(
        [
            python,
            "-c",
            "from daemon import DaemonContext; import starmux.daemon.runtime, "
            "starmux.relay.app, starmux.client.live; print(DaemonContext.__module__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree: the installed packages alone
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "daemon.daemon"
    version = subprocess.run(
        [str(env_dir / "bin" / "starmux"), "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0, version.stderr
