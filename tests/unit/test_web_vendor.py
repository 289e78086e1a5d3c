"""web/vendor holds the locked third-party packages' files, byte for byte (issue 15).

``web/tools/vendor.mjs check`` installs web/package-lock.json afresh with ``npm ci``
(npm checks each tarball against the lockfile's sha512 integrity) and compares every
vendored file with it; this test runs it and fails saying what to install when Node
is missing (tests/setup_system.py installs it as root on Debian).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ..timeouts import scaled

WEB = Path(__file__).resolve().parents[2] / "web"


def _node_and_npm() -> str:
    missing = [program for program in ("node", "npm") if shutil.which(program) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the web controller's checks need Node.js 20.19+ "
            "with npm (Debian: apt-get install nodejs npm; tests/setup_system.py does it as root)"
        )
    node = shutil.which("node")
    assert node is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major, minor = (int(part) for part in version.stdout.strip().lstrip("v").split(".")[:2])
    if (major, minor) < (20, 19):
        pytest.fail(
            f"node {version.stdout.strip()} is too old: the vendored @noble libraries and the "
            "interop tests need Node.js 20.19+ (e.g. from NodeSource's Debian packages)"
        )
    return node


@pytest.mark.slow
def test_vendored_files_are_the_locked_packages() -> None:
    node = _node_and_npm()
    done = subprocess.run(
        [node, str(WEB / "tools" / "vendor.mjs"), "check"],
        capture_output=True,
        text=True,
        timeout=scaled(300),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "byte-identical to the locked packages" in done.stdout
    for package in ("@noble/curves", "@noble/ciphers", "@noble/hashes", "@msgpack/msgpack"):
        assert f"{package}@" in done.stdout


def test_every_dependency_is_pinned_to_an_exact_version() -> None:
    import json

    manifest = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    assert manifest["dependencies"], "web/package.json lists no dependencies"
    for name, version in manifest["dependencies"].items():
        assert version[0].isdigit(), f"{name} is not pinned exactly: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        assert lock["packages"][f"node_modules/{name}"]["integrity"].startswith("sha512-")
