"""A long-lived starmux process (the machine daemon, the controller agent) as an
operating-system process: one per home, found, stopped, detached.

Each kind names its files in a :class:`ProcessFiles` (the daemon: ``daemon.lock`` and
``daemon.json``; the controller agent: ``controller.lock`` and ``controller.json``)
and binds this module's functions to it (``daemon/process.py``, ``client/agent_process.py``).

API::

    with ProcessLock(home, files, argv=sys.argv, relay_url=url) as lock:  # AlreadyRunning
        lock.update_status(state="paired", fingerprint=fp)
        ...                                  # run; update_status() on every state change
    read_status(home, files) -> ProcessStatus | None                  # `... status [--json]`
    stop_process(home, files, timeout=10.0) -> bool                   # `... stop`
    detach(argv, home=home, files=files, log_file=home / "x.log") -> pid  # start in background

Files in the home (0700), each 0600:

- the lock file: empty; the running process holds an exclusive ``flock`` on it for its
  whole life. **The lock is the truth**: the kernel drops it when the process dies,
  however it dies, so a SIGKILLed process never blocks the next one. The file itself
  is never deleted: unlinking a lock file lets two processes lock two different inodes.
- the status file: what the process says about itself (pid, start time, argv, relay,
  state, fingerprint), replaced atomically on every change and deleted on exit. It is
  only believed while the lock is held; without the lock it is a leftover.

``detach`` appends the child's stdout and stderr to a log file it creates 0600 (it may
show a pairing code), in a folder that must be private too.

Errors: :class:`ProcessAlreadyRunning` (a UsageError: exit 2, the hint names the stop
and status commands); :class:`ProcessStartError` (the detached child exited or hung;
the message ends with its last log lines); :class:`ProcessStopError` (the lock outlived
a SIGKILL).

Invariants:
- A signal is only ever sent to the pid in the status file while the lock is held, so
  a recycled pid of an unrelated process is never signalled. The remaining window (a
  new process has just taken the lock but not yet removed its predecessor's status
  file) is two system calls long: the first thing a new holder does is unlink it.
- Probes (:func:`read_status`, :func:`stop_process`) take a *shared* lock for an
  instant; a starting process that loses the race against a probe retries briefly
  instead of reporting "already running" (a probe holds the lock shared, the owner
  exclusive).
- The lock descriptor is close-on-exec, so processes it spawns (agent sessions) never
  inherit it (one outliving its parent would otherwise keep the home locked). Do not
  ``os.fork()`` without exec while holding it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from starmux.errors import StarmuxError, UsageError
from starmux.home import ensure_private_dir, write_private_file

STARTING: Final = "starting"  # lock taken, not yet ready: detach() waits past it


@dataclass(frozen=True)
class ProcessFiles:
    """What one kind of long-lived process is called and where it keeps its files."""

    lock: str  # e.g. "daemon.lock"
    status: str  # e.g. "daemon.json"
    format: str  # the status file's format tag, e.g. "starmux-daemon-status-v1"
    noun: str  # e.g. "starmux daemon", in messages
    command: str  # e.g. "starmux daemon", for the stop/status hints
    states: frozenset[str]  # what update_status() accepts (STARTING included)


# Polling intervals. Waiting for *another, unrelated* process to release a flock or to
# write a file has no notification we can use: a blocking flock has no timeout and would
# itself take the lock (racing a daemon that is starting), the daemon is not our child so
# we cannot wait() for it, and inotify/pidfd are Linux-only and still would not say
# "the lock is free". A short poll is simple, portable and costs nothing here.
_POLL_INTERVAL: Final = 0.05
# How long a starting daemon keeps retrying while only probes hold the lock (shared).
_PROBE_RACE_BUDGET: Final = 1.0
# After SIGKILL the kernel releases the lock as the process is torn down; allow for a
# loaded machine before declaring that something else holds it.
_KILL_GRACE: Final = 5.0
_LOG_TAIL_LINES: Final = 20


class ProcessAlreadyRunning(UsageError):
    """Another process of this kind holds the lock of this home."""


class ProcessStartError(StarmuxError):
    """A detached process did not come up; the message carries the end of its log."""


class ProcessStopError(StarmuxError):
    """The lock stays held even after the recorded process was killed."""


def lock_path(home: Path, files: ProcessFiles) -> Path:
    return home / files.lock


def status_path(home: Path, files: ProcessFiles) -> Path:
    return home / files.status


@dataclass(frozen=True)
class ProcessStatus:
    """What ``... status`` shows. ``state`` is what the process last wrote; when
    ``alive`` is false the record is a leftover of a process that died."""

    alive: bool
    lock_held: bool
    pid: int | None
    state: str | None
    started_at: float | None
    updated_at: float | None
    uptime: float | None
    argv: tuple[str, ...]
    relay_url: str | None
    fingerprint: str | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "lock_held": self.lock_held,
            "pid": self.pid,
            "state": self.state,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "uptime": self.uptime,
            "argv": list(self.argv),
            "relay_url": self.relay_url,
            "fingerprint": self.fingerprint,
            "details": self.details,
        }


class ProcessLock:
    """Hold the lock file in ``home`` and keep the status file current.

    ``started_at`` defaults to the wall clock at construction (the edge); ``argv`` is
    recorded so ``status`` can show how the process was started.
    """

    def __init__(
        self,
        home: Path,
        files: ProcessFiles,
        *,
        argv: Sequence[str],
        relay_url: str | None = None,
        fingerprint: str | None = None,
        started_at: float | None = None,
    ) -> None:
        self.home = home
        self.files = files
        self._fd: int | None = None
        self._guard = threading.Lock()  # write_private_file's temp name is per process
        self._record: dict[str, Any] = {
            "format": files.format,
            "pid": os.getpid(),
            "started_at": time.time() if started_at is None else started_at,
            "updated_at": None,
            "argv": list(argv),
            "relay_url": relay_url,
            "state": STARTING,
            "fingerprint": fingerprint,
            "details": {},
        }

    @property
    def pid(self) -> int:
        return int(self._record["pid"])

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        if self._fd is not None:
            raise UsageError("this ProcessLock is already held")
        ensure_private_dir(self.home)
        fd = os.open(
            lock_path(self.home, self.files),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            _flock_exclusive(fd, self.home, self.files)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._record["pid"] = os.getpid()  # not at construction: a fork may lie between
        # The status file may be a leftover of a killed daemon; drop it before anything
        # else so nobody reads its pid as ours (see the module invariants).
        status_path(self.home, self.files).unlink(missing_ok=True)
        try:
            self._write()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Delete the status file, then drop the lock (in that order: once the lock
        is free a new daemon may write its own status file, which we must not delete)."""
        if self._fd is None:
            return
        try:
            status_path(self.home, self.files).unlink(missing_ok=True)
        finally:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def update_status(
        self,
        *,
        state: str | None = None,
        relay_url: str | None = None,
        fingerprint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Rewrite the status file atomically; arguments left ``None`` keep their value.

        Blocking file I/O with an fsync (milliseconds, on rare state changes); from the
        event loop call it directly or via ``asyncio.to_thread`` (it is thread-safe).
        """
        if self._fd is None:
            raise UsageError("update_status() needs the lock to be held")
        if state is not None:
            if state not in self.files.states:
                raise UsageError(f"unknown {self.files.noun.split()[-1]} state {state!r}")
            self._record["state"] = str(state)
        if relay_url is not None:
            self._record["relay_url"] = relay_url
        if fingerprint is not None:
            self._record["fingerprint"] = fingerprint
        if details is not None:  # what this kind of process shows besides (JSON values)
            self._record["details"] = {**self._record["details"], **details}
        self._write()

    def _write(self) -> None:
        with self._guard:
            self._record["updated_at"] = time.time()
            data = json.dumps(self._record, indent=2, sort_keys=True) + "\n"
            write_private_file(status_path(self.home, self.files), data.encode())


def _flock_exclusive(fd: int, home: Path, files: ProcessFiles) -> None:
    deadline = time.monotonic() + _PROBE_RACE_BUDGET
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _already_running(home, files) from None
        # Only shared holders: probes, which let go within microseconds.
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() >= deadline:
            raise ProcessAlreadyRunning(
                f"{lock_path(home, files)} is held (shared) by a process that is not a "
                f"{files.noun}",
                hint=f"find it with: fuser -v {shlex.quote(str(lock_path(home, files)))}",
            )
        time.sleep(_POLL_INTERVAL / 5)


def _already_running(home: Path, files: ProcessFiles) -> ProcessAlreadyRunning:
    record = _read_record(home, files)
    pid = record.get("pid") if record else None
    who = f"pid {pid}" if isinstance(pid, int) else "it is starting up"
    return ProcessAlreadyRunning(
        f"a {files.noun} is already running for {home} ({who})",
        hint=f"stop it with `{files.command} stop`, or see it with `{files.command} status`",
    )


def _lock_held(home: Path, files: ProcessFiles) -> bool:
    """Whether some process holds the lock, without keeping or creating anything."""
    try:
        fd = os.open(lock_path(home, files), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        # Shared, so two probes never make each other (or a status call) see an owner.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_record(home: Path, files: ProcessFiles) -> dict[str, Any] | None:
    """The status file's contents, or None if it is missing or not ours."""
    try:
        data = json.loads(status_path(home, files).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable or hand-edited: say nothing rather than something false
    if not isinstance(data, dict) or data.get("format") != files.format:
        return None
    return data


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_status(
    home: Path, files: ProcessFiles, *, now: float | None = None
) -> ProcessStatus | None:
    """The process of ``home``; None if none runs and none left a status file."""
    held = _lock_held(home, files)
    record = _read_record(home, files) or {}
    if not held and not record:
        return None
    pid = record.get("pid") if isinstance(record.get("pid"), int) else None
    alive = held and (pid is None or _pid_exists(pid))
    started_at = _number(record.get("started_at"))
    uptime = None
    if alive and started_at is not None:
        uptime = max(0.0, (time.time() if now is None else now) - started_at)
    argv = record.get("argv")
    return ProcessStatus(
        alive=alive,
        lock_held=held,
        pid=pid,
        state=_text(record.get("state")) or (STARTING if held else None),
        started_at=started_at,
        updated_at=_number(record.get("updated_at")),
        uptime=uptime,
        argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
        relay_url=_text(record.get("relay_url")),
        fingerprint=_text(record.get("fingerprint")),
        details=record["details"] if isinstance(record.get("details"), dict) else {},
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def stop_process(home: Path, files: ProcessFiles, *, timeout: float = 10.0) -> bool:
    """SIGTERM the process of ``home``, SIGKILL it after ``timeout`` s; True if one ran.

    Returns once the lock is free. Raises :class:`ProcessStopError` if the lock is still
    held after the kill (a process that inherited it, or a lock holder that never wrote
    a status file).
    """
    if not _lock_held(home, files):
        return False
    deadline = time.monotonic() + timeout
    signalled: int | None = None
    while True:
        if not _lock_held(home, files):
            return True
        if signalled is None:
            # Right after start the status file may not be written yet: keep looking.
            record = _read_record(home, files)
            pid = record.get("pid") if record else None
            if isinstance(pid, int) and _signal(pid, signal.SIGTERM):
                signalled = pid
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)

    if signalled is not None and _lock_held(home, files):
        _signal(signalled, signal.SIGKILL)
        kill_deadline = time.monotonic() + _KILL_GRACE
        while _lock_held(home, files) and time.monotonic() < kill_deadline:
            time.sleep(_POLL_INTERVAL)
    if not _lock_held(home, files):
        return True
    who = (
        f"pid {signalled} was killed but"
        if signalled is not None
        else "no live pid is recorded and"
    )
    raise ProcessStopError(
        f"{who} {lock_path(home, files)} is still held",
        hint=f"find the holder with: fuser -v {shlex.quote(str(lock_path(home, files)))}",
    )


def _signal(pid: int, signum: signal.Signals) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def detach(
    argv: list[str],
    *,
    home: Path,
    files: ProcessFiles,
    log_file: Path,
    ready_timeout: float = 15.0,
) -> int:
    """Start ``argv`` (a ``... start --foreground`` command) in the background.

    The child gets a new session, stdin from /dev/null and stdout+stderr appended to
    ``log_file`` (0600: it may show a pairing code). ``argv`` must exec the process
    itself, not a wrapper that forks it: readiness means *this* pid holds the lock.
    Returns the child's pid once it
    holds the lock and has left the ``starting`` state; raises
    :class:`ProcessStartError` with the end of the log if it exits or hangs first (a
    hung child is killed, so it cannot block the next attempt).
    """
    ensure_private_dir(home)
    ensure_private_dir(log_file.parent)
    current = read_status(home, files)
    if current is not None and current.alive:
        raise _already_running(home, files)

    log_fd = _open_log(log_file)
    try:
        header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S %z')} starting: {shlex.join(argv)}\n"
        os.write(log_fd, header.encode())
        log_start = os.fstat(log_fd).st_size
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise ProcessStartError(
                f"cannot start {argv[0] if argv else files.noun}: {exc.strerror}"
            ) from exc
    finally:
        os.close(log_fd)

    deadline = time.monotonic() + ready_timeout
    while True:
        code = child.poll()
        if code is not None:
            raise ProcessStartError(
                f"the {files.noun} exited during start-up (status {code}):\n"
                + _log_tail(log_file, log_start),
                hint=f"full log: {log_file}",
            )
        record = _read_record(home, files)
        if (
            record is not None
            and record.get("pid") == child.pid
            and record.get("state") != STARTING
            and _lock_held(home, files)
        ):
            break
        if time.monotonic() >= deadline:
            _terminate(child)
            raise ProcessStartError(
                f"the {files.noun} did not become ready within {ready_timeout:g}s "
                "and was stopped:\n" + _log_tail(log_file, log_start),
                hint=f"full log: {log_file}",
            )
        time.sleep(_POLL_INTERVAL)

    # We do not wait for the process, but if it exits while we are still alive (a long
    # caller, a test) reap it so it does not linger as a zombie that looks alive.
    threading.Thread(target=child.wait, name=f"reap-{child.pid}", daemon=True).start()
    return child.pid


def _open_log(log_file: Path) -> int:
    fd = os.open(
        log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        os.close(fd)
        raise UsageError(
            f"{log_file} is accessible by other users (mode {mode:o}); it may show pairing codes",
            hint=f"run: chmod 600 {shlex.quote(str(log_file))}",
        )
    return fd


def _log_tail(log_file: Path, start: int) -> str:
    try:
        with log_file.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {log_file}: {exc.strerror})"
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(nothing was written)"


def _terminate(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(_KILL_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


__all__ = [
    "STARTING",
    "ProcessAlreadyRunning",
    "ProcessFiles",
    "ProcessLock",
    "ProcessStartError",
    "ProcessStatus",
    "ProcessStopError",
    "detach",
    "lock_path",
    "read_status",
    "status_path",
    "stop_process",
]
