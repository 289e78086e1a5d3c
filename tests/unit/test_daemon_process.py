"""The daemon's lock, status file, stop and detach, with real processes and files.

Lock holders are real child processes running a few lines of Python; the tests
synchronise on the pid they print once they hold the lock (never on sleeps), and
kill every child they started on the way out.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from starmux.daemon.process import (
    DaemonAlreadyRunning,
    DaemonLock,
    DaemonStartError,
    DaemonState,
    detach,
    lock_path,
    read_status,
    status_path,
    stop_daemon,
)
from starmux.errors import UsageError
from starmux.home import write_private_file

# Takes the lock, says so by printing its pid, then holds it until stdin closes.
HOLDER = """
import os, signal, sys
from pathlib import Path
from starmux.daemon.process import DaemonLock

if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
with DaemonLock(
    Path(sys.argv[1]), argv=sys.argv, relay_url="wss://relay.test/v1/ws", started_at=1000.0
) as lock:
    lock.update_status(state="paired", fingerprint="K7Q2-M4XD")
    print(os.getpid(), flush=True)
    sys.stdin.read()
"""

# What `daemon start --foreground` does, as far as detach() can tell.
READY_DAEMON = """
import signal, sys
from pathlib import Path
from starmux.daemon.process import DaemonLock

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
with DaemonLock(Path(sys.argv[1]), argv=sys.argv) as lock:
    print("daemon up", flush=True)
    lock.update_status(state="paired")
    while True:
        signal.pause()
"""

Spawn = Callable[..., subprocess.Popen[str]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start child processes; kill and reap whatever is left of them afterwards."""
    children: list[subprocess.Popen[str]] = []

    def start(*argv: str, **kwargs: Any) -> subprocess.Popen[str]:
        child: subprocess.Popen[str] = subprocess.Popen(argv, text=True, **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_holder(spawn: Spawn, home: Path) -> Callable[..., tuple[subprocess.Popen[str], int]]:
    def start(*, ignore_term: bool = False) -> tuple[subprocess.Popen[str], int]:
        child = spawn(
            sys.executable,
            "-c",
            HOLDER,
            str(home),
            "ignore-term" if ignore_term else "handle-term",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, "the holder exited before taking the lock (see its stderr above)"
        pid = int(line)
        assert pid == child.pid
        return child, pid

    return start


# --- the lock ---------------------------------------------------------------------


def test_lock_writes_status_and_cleans_up_on_exit(home: Path) -> None:
    with DaemonLock(
        home, argv=["starmux", "daemon", "start"], relay_url="wss://r/v1/ws", started_at=50.0
    ) as lock:
        record = json.loads(status_path(home).read_text())
        assert record["pid"] == os.getpid() == lock.pid
        assert record["state"] == "starting"
        assert record["argv"] == ["starmux", "daemon", "start"]
        assert record["relay_url"] == "wss://r/v1/ws"
        assert record["started_at"] == 50.0
        assert record["fingerprint"] is None

        lock.update_status(state=DaemonState.UNPAIRED, fingerprint="K7Q2")
        lock.update_status(state="connecting")
        record = json.loads(status_path(home).read_text())
        assert record["state"] == "connecting"
        assert record["fingerprint"] == "K7Q2"
        assert record["relay_url"] == "wss://r/v1/ws"  # untouched fields survive

        status = read_status(home, now=80.0)
        assert status is not None
        assert status.alive
        assert status.lock_held
        assert status.pid == os.getpid()
        assert status.state == "connecting"
        assert status.uptime == 30.0
        assert status.argv == ("starmux", "daemon", "start")
        assert json.loads(json.dumps(status.to_json()))["fingerprint"] == "K7Q2"

    assert not status_path(home).exists()
    assert lock_path(home).exists()  # never unlinked: see the module invariants
    assert read_status(home) is None
    assert sorted(p.name for p in home.iterdir()) == ["daemon.lock"]  # no temp files


@pytest.fixture(params=[0o000, 0o022], ids=["umask-000", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[None]:
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask")
def test_lock_and_status_files_are_private(home: Path) -> None:
    with DaemonLock(home, argv=["x"]) as lock:
        lock.update_status(state="paired")
        assert mode(home) == 0o700
        assert mode(lock_path(home)) == 0o600
        assert mode(status_path(home)) == 0o600


def test_a_second_lock_in_the_same_process_is_refused(home: Path) -> None:
    # flock belongs to the open file description, so even this process is turned away.
    with DaemonLock(home, argv=["x"]):
        with pytest.raises(DaemonAlreadyRunning) as caught:
            DaemonLock(home, argv=["y"]).acquire()
        assert f"pid {os.getpid()}" in caught.value.message


def test_lock_held_by_another_process_is_refused_naming_its_pid(
    home: Path, start_holder: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    _, pid = start_holder()

    with pytest.raises(DaemonAlreadyRunning) as caught:
        DaemonLock(home, argv=["second"]).acquire()
    assert f"pid {pid}" in caught.value.message
    assert caught.value.hint is not None
    assert "starmux daemon stop" in caught.value.hint
    assert "starmux daemon status" in caught.value.hint
    assert isinstance(caught.value, UsageError)

    status = read_status(home, now=1012.5)
    assert status is not None
    assert (status.alive, status.lock_held, status.pid) == (True, True, pid)
    assert (status.state, status.fingerprint) == ("paired", "K7Q2-M4XD")
    assert status.relay_url == "wss://relay.test/v1/ws"
    assert status.uptime == 12.5


def test_a_stale_status_file_from_a_killed_daemon_does_not_block(
    home: Path, start_holder: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    holder, pid = start_holder()
    holder.kill()
    holder.wait()
    assert json.loads(status_path(home).read_text())["pid"] == pid  # left behind

    stale = read_status(home)
    assert stale is not None
    assert (stale.alive, stale.lock_held, stale.pid, stale.uptime) == (False, False, pid, None)

    with DaemonLock(home, argv=["new"]):
        status = read_status(home)
        assert status is not None
        assert (status.alive, status.pid, status.state) == (True, os.getpid(), "starting")
    assert read_status(home) is None


def test_a_status_probe_does_not_make_a_starting_daemon_fail(home: Path) -> None:
    # A probe holds the lock shared for an instant; stretch that instant to 0.2 s.
    with DaemonLock(home, argv=["x"]):
        pass
    fd = os.open(lock_path(home), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    timer = threading.Timer(0.2, os.close, [fd])  # closing the fd drops the lock
    timer.start()
    try:
        with DaemonLock(home, argv=["x"]):
            assert read_status(home) is not None
    finally:
        timer.join()


def test_update_status_checks_state_and_lock(home: Path) -> None:
    lock = DaemonLock(home, argv=["x"])
    with pytest.raises(UsageError):
        lock.update_status(state="paired")  # not held yet
    with lock:
        with pytest.raises(UsageError, match="unknown daemon state"):
            lock.update_status(state="sleeping")
        assert json.loads(status_path(home).read_text())["state"] == "starting"
        with pytest.raises(UsageError):
            lock.acquire()
    assert not lock.held


def test_read_status_of_an_empty_or_missing_home(home: Path) -> None:
    assert read_status(home) is None
    assert not home.exists()  # reading creates nothing
    home.mkdir(mode=0o700)
    assert read_status(home) is None


# --- stop -------------------------------------------------------------------------


def test_stop_sends_sigterm_and_waits_for_a_clean_exit(
    home: Path, start_holder: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    holder, _ = start_holder()
    assert stop_daemon(home, timeout=10.0) is True
    assert holder.wait() == 0  # its SIGTERM handler ran and the lock's __exit__ too
    assert not status_path(home).exists()
    assert read_status(home) is None


def test_stop_escalates_to_sigkill(
    home: Path, start_holder: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    holder, pid = start_holder(ignore_term=True)
    assert stop_daemon(home, timeout=0.3) is True
    assert holder.wait() == -signal.SIGKILL
    status = read_status(home)
    assert status is not None
    assert (status.alive, status.pid) == (False, pid)  # killed: the record stays, stale


def test_stop_never_signals_a_pid_without_the_lock(home: Path, spawn: Spawn) -> None:
    unrelated = spawn("sleep", "30")
    with DaemonLock(home, argv=["x"]):
        pass  # leaves the (unlocked) lock file, as a dead daemon would
    record = {"format": "starmux-daemon-status-v1", "pid": unrelated.pid, "state": "paired"}
    write_private_file(status_path(home), json.dumps(record).encode())

    assert stop_daemon(home, timeout=0.2) is False
    assert unrelated.poll() is None  # still running, never signalled
    status = read_status(home)
    assert status is not None
    assert (status.alive, status.pid) == (False, unrelated.pid)


def test_stop_when_nothing_ever_ran(home: Path) -> None:
    assert stop_daemon(home) is False


# --- detach -----------------------------------------------------------------------


def test_detach_returns_once_the_daemon_is_ready(home: Path, tmp_path: Path) -> None:
    log_file = home / "daemon.log"
    pid = detach([sys.executable, "-c", READY_DAEMON, str(home)], home=home, log_file=log_file)
    try:
        status = read_status(home)
        assert status is not None
        assert (status.alive, status.pid, status.state) == (True, pid, "paired")
        assert os.getsid(pid) == pid  # its own session: no terminal, survives our exit
        assert mode(log_file) == 0o600
        assert "daemon up" in log_file.read_text()
    finally:
        assert stop_daemon(home) is True
    assert read_status(home) is None


def test_detach_reports_a_daemon_that_exits_at_once(home: Path) -> None:
    log_file = home / "daemon.log"
    write_private_file(log_file, b"error: from an earlier run\n")
    failing = "import sys; sys.exit(\"error: relay URL 'nope' is not a ws:// URL\")"

    with pytest.raises(DaemonStartError) as caught:
        detach([sys.executable, "-c", failing], home=home, log_file=log_file)
    assert "error: relay URL 'nope' is not a ws:// URL" in caught.value.message
    assert "status 1" in caught.value.message
    assert "earlier run" not in caught.value.message  # only this attempt's lines
    assert caught.value.hint == f"full log: {log_file}"
    assert log_file.read_text().startswith("error: from an earlier run\n")  # appended
    assert mode(log_file) == 0o600


def test_detach_stops_a_daemon_that_never_becomes_ready(home: Path) -> None:
    hangs = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    with pytest.raises(DaemonStartError, match="did not become ready") as caught:
        detach([sys.executable, "-c", hangs], home=home, log_file=home / "log", ready_timeout=0.5)
    pid = int(caught.value.message.splitlines()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_detach_refuses_while_a_daemon_runs(
    home: Path, start_holder: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    _, pid = start_holder()
    with pytest.raises(DaemonAlreadyRunning, match=f"pid {pid}"):
        detach([sys.executable, "-c", READY_DAEMON, str(home)], home=home, log_file=home / "l")
    assert not (home / "l").exists()


def test_detach_refuses_a_log_others_can_read(home: Path) -> None:
    home.mkdir(mode=0o700)
    log_file = home / "daemon.log"
    log_file.touch(mode=0o644)
    log_file.chmod(0o644)
    with pytest.raises(UsageError, match="accessible by other users"):
        detach([sys.executable, "-c", READY_DAEMON, str(home)], home=home, log_file=log_file)
    assert read_status(home) is None


def test_detach_of_a_missing_program(home: Path) -> None:
    with pytest.raises(DaemonStartError, match="cannot start"):
        detach([str(home / "no-such-program")], home=home, log_file=home / "log")
