"""Files both ways through every real part: a session publishes an artifact (local
API → daemon), the controller agent fetches it over the KK channel through the relay;
``run --attach`` delivers files before the command starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from starmux.transfer import file_digest

from .cluster import Paired, pair, python
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess
from .watcher import Watcher


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def publish(path: str, *extra: str) -> list[str]:
    """A session that publishes ``path`` and prints what `artifact add --json` said."""
    return python(
        "import subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'artifact', 'add', {path!r},"
        f" '--json', *{list(extra)!r}], capture_output=True, text=True)\n"
        "print(r.stdout.strip() or 'exit %d %s' % (r.returncode, r.stderr.strip()), flush=True)\n"
        "sys.exit(r.returncode)\n"
    )


def digest_of(path: Path) -> str:
    digest = file_digest()
    digest.update(path.read_bytes())
    return digest.hexdigest()


def finished_output(paired: Paired, session: str) -> tuple[int, str]:
    watcher = Watcher(paired.controller, session)
    code = watcher.finish()
    return code, b"".join(watcher.lines).decode()


def test_artifact_published_listed_and_fetched(paired: Paired, tmp_path: Path) -> None:
    report = paired.workdir / "report.txt"
    report.write_bytes(os.urandom(300_000) + b"\x1b]52;c;evil\x07")
    session = paired.run(*publish(str(report), "--name", "report.bin"))
    code, output = finished_output(paired, session)
    assert code == 0, output
    published = json.loads(output)
    assert published["name"] == "report.bin" and published["size"] == report.stat().st_size

    listed = paired.json("artifacts", session)
    assert isinstance(listed, list) and len(listed) == 1
    assert listed[0]["id"] == published["artifact"]
    assert listed[0]["digest"] == digest_of(report) == published["digest"]

    target = tmp_path / "fetched.bin"
    fetched = paired.json("get", published["artifact"], "-o", str(target))
    assert isinstance(fetched, dict)
    assert target.read_bytes() == report.read_bytes()
    assert fetched["digest"] == digest_of(report)
    assert target.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.starmux-part"))

    # An existing file is not replaced without --force.
    again = run_cli(paired.controller, "get", published["artifact"], "-o", str(target))
    assert again.returncode != 0 and "exists" in again.stderr and "--force" in again.stderr


def test_a_path_outside_the_allowed_roots_is_refused(paired: Paired) -> None:
    session = paired.run(*publish("/etc/hostname"))
    code, output = finished_output(paired, session)
    assert code != 0
    assert "not inside an allowed root" in output
    assert paired.json("artifacts", session) == []


def test_an_attachment_reaches_the_session(paired: Paired, tmp_path: Path) -> None:
    data = tmp_path / "dataset.csv"
    data.write_bytes(b"a,b\n" + os.urandom(200_000).hex().encode())
    show = python(
        "import os, hashlib, pathlib\n"
        "folder = pathlib.Path(os.environ['STARMUX_ATTACHMENTS'])\n"
        "for path in sorted(folder.iterdir()):\n"
        "    print(path.name, oct(path.stat().st_mode & 0o777), path.stat().st_size,"
        " hashlib.sha256(path.read_bytes()).hexdigest(), flush=True)\n"
    )
    reply = paired.json(
        "run",
        "--machine",
        paired.daemon.name,
        "--cwd",
        str(paired.workdir),
        "--attach",
        str(data),
        "--",
        *show,
    )
    assert isinstance(reply, dict) and reply["ok"] is True, reply
    code, output = finished_output(paired, str(reply["session"]))
    assert code == 0, output
    import hashlib

    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    assert output.split() == ["dataset.csv", "0o600", str(data.stat().st_size), expected]


def test_an_attachment_over_the_cap_is_refused_before_anything_is_sent(
    paired: Paired, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 3 * 1024 * 1024)
    env_before = os.environ.get("STARMUX_MAX_FILE_SIZE")
    os.environ["STARMUX_MAX_FILE_SIZE"] = "1M"
    try:
        result = run_cli(
            paired.controller,
            "run",
            "--machine",
            paired.daemon.name,
            "--attach",
            str(big),
            "--",
            "true",
        )
    finally:
        if env_before is None:
            del os.environ["STARMUX_MAX_FILE_SIZE"]
        else:
            os.environ["STARMUX_MAX_FILE_SIZE"] = env_before
    assert result.returncode != 0
    assert "big.bin is 3.0 MiB" in result.stderr and "at most 1.0 MiB" in result.stderr
    assert "nothing was sent" in result.stderr
    assert paired.json("sessions") == []  # no session was started
    assert not (paired.daemon.home / "uploads").exists()  # and no byte reached the machine
