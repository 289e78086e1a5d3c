"""One agent session's operating-system process: spawned, captured, fed, stopped.

API (what :mod:`daemon.sessions` calls)::

    cwd = resolve_session_cwd(request.cwd, allowed_roots)        # UsageError
    proc = await AgentProcess.start(argv, cwd=cwd, env=env, pty=False,
                                    on_output=on_output)         # UsageError
    await proc.send_input(b"yes\\n"); await proc.close_input()   # SessionInputClosed
    proc.resize(rows, cols)                                      # pty sessions only
    code = await proc.wait()          # exit code, -N if killed by signal N
    code = await proc.cancel(grace=5.0)                          # idempotent

Streams: without a pty the child's stdout and stderr are two pipes, delivered as
``"stdout"`` and ``"stderr"``; with a pty (``pty=True``) the child's three standard
streams are the pty slave and it is the child's controlling terminal; its output is
delivered as ``"pty"``.

Invariants:

- **Nothing dropped, nothing buffered without bound.** One reader per stream reads
  whatever is available, up to ``max_chunk`` bytes (never line by line), and awaits
  ``on_output(stream, data)`` before it reads again. Calls are in order per stream;
  between streams there is no order. A slow consumer leaves data in the kernel's pipe
  or pty buffer, and a child that fills it blocks in ``write``.
- **``wait()`` returns only after the last output was delivered**, so a caller that
  records "exited" after ``wait()`` records it after the last chunk. A descendant
  that keeps a stream open after the agent exits (``server &``) would delay that
  forever, so once the agent has exited a reader waits for more data at most
  ``linger`` seconds in total (time spent in ``on_output`` does not count), then
  stops reading that stream; what the descendant writes later is not captured.
- **The process group is ours until we reap.** The agent leads a new session and
  process group (``start_new_session=True``), so cancel signals it and everything
  it started that stayed in the group. Exit is noticed through a pidfd (or, where
  the kernel refuses pidfds, a thread blocked in ``waitid(WNOWAIT)``), neither of
  which reaps: the agent stays a zombie, which keeps its pid and therefore the
  group id from being reused, until the one place that reaps it, after any cancel
  has sent its last signal. A signal can never reach a recycled group.
- **No descriptor leaks.** The child's ends (pipe ends, pty slave) are closed in
  the daemon right after the spawn, each reader closes its descriptor at end of
  stream, the input descriptor is closed by ``close_input`` (pipes) or when the
  process is done, and a failed start closes everything it opened. All of them are
  close-on-exec, so one agent never inherits another's streams.
- **If ``on_output`` raises**, the output can no longer be recorded, so the process
  is cancelled (SIGTERM, then SIGKILL after ``FAILURE_GRACE``) and ``wait()`` and
  ``cancel()`` re-raise that exception once it is gone.

Why a trampoline for the pty: a controlling terminal is acquired with
``ioctl(TIOCSCTTY)`` by a session leader, in the child, after ``setsid``.
``subprocess`` can ``setsid`` (``start_new_session``) but offers no hook for the
ioctl other than ``preexec_fn``, which is unsafe in a process with threads. So the
pty child first runs a few lines of Python (``-I -S``: no site, no ``PYTHON*``
variables from the agent's environment) that take the terminal, restore the signal
dispositions Python ignores at startup (an exec keeps ``SIG_IGN``), and ``execv``
the agent: same pid, same group.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from starmux.errors import UsageError

OutputCallback = Callable[[str, bytes], Awaitable[None]]

#: Grace between SIGTERM and SIGKILL when the process is stopped because ``on_output``
#: failed (a cancel requested by a controller passes its own).
FAILURE_GRACE: Final = 5.0
#: A new pty's window size (rows, columns) until :meth:`AgentProcess.resize`; 0x0
#: makes full-screen programs misbehave.
DEFAULT_WINSIZE: Final = (24, 80)

_ALLOW_ROOT_HINT: Final = "start the daemon with --allow-root DIR to allow sessions under DIR"

_PTY_TRAMPOLINE: Final = """\
import fcntl, os, signal, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
try:
    os.execv(sys.argv[1], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"starmux: cannot run {sys.argv[1]}: {exc.strerror}\\n")
    os._exit(127)
"""


class SessionInputClosed(UsageError):
    """Input was sent to a session whose input is closed or whose process is gone."""

    def __init__(self, message: str = "the session no longer accepts input") -> None:
        super().__init__(
            message, hint="the agent has exited or closed its input; start a new session"
        )


def resolve_session_cwd(cwd: str, allowed_roots: Sequence[Path]) -> Path:
    """Return the real path of ``cwd`` if it is an existing directory inside an allowed root.

    ``cwd`` must be absolute, or start with ``~`` (alone or ``~/...``), meaning the
    home of the user the daemon runs as (``$HOME``, else the password database): the
    controller cannot know that home, so the daemon expands it. ``~user`` forms are
    refused like any other relative path. Symlinks are resolved before the check, so
    a link inside a root that points outside it is refused; the returned path has no
    symlinks in it, and the agent is started there.
    """
    roots = [Path(root).expanduser().resolve() for root in allowed_roots]
    shown_roots = ", ".join(str(root) for root in roots) or "none"

    def refuse(why: str) -> UsageError:
        return UsageError(
            f"refusing to start a session in {cwd}: {why} (allowed roots: {shown_roots})",
            hint=_ALLOW_ROOT_HINT,
        )

    home_relative = cwd == "~" or cwd.startswith("~/")
    path = Path(cwd).expanduser() if home_relative else Path(cwd)
    if not path.is_absolute():
        raise refuse("the directory must be an absolute path")
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise refuse("it does not exist") from exc
    if not real.is_dir():
        raise refuse("it is not a directory")
    if not any(real.is_relative_to(root) for root in roots):
        where = "it" if real == path else f"it resolves to {real}, which"
        raise refuse(f"{where} is not inside an allowed root")
    return real


class AgentProcess:
    """A running agent: its output pumped to ``on_output``, its input, its exit."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        outputs: Sequence[tuple[str, int]],
        input_fd: int,
        pty: bool,
        on_output: OutputCallback,
        max_chunk: int,
        linger: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._popen = popen
        self._pty = pty
        self._on_output = on_output
        self._max_chunk = max_chunk
        self._linger = linger
        self._input_fd: int | None = input_fd
        self._input_lock = asyncio.Lock()
        self._input_waiter: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[None] = loop.create_future()
        self._terminating: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._watch_exit()
        self._pumps = [
            loop.create_task(self._pump(stream, fd), name=f"agent {popen.pid} {stream}")
            for stream, fd in outputs
        ]
        self._done = loop.create_task(self._run(), name=f"agent {popen.pid}")

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        pty: bool,
        on_output: OutputCallback,
        max_chunk: int = 16384,
        linger: float = 2.0,
    ) -> AgentProcess:
        """Spawn ``argv`` in ``cwd`` with exactly ``env`` as its environment.

        ``argv[0]`` is looked up on the ``PATH`` of ``env`` (or, if it has a slash,
        relative to ``cwd``); if it is missing or not executable, or the spawn
        fails, :class:`UsageError` says so and nothing is left open or running.
        """
        if not argv:
            raise UsageError("an agent command needs at least a program name")
        if max_chunk <= 0:
            raise UsageError(f"max_chunk must be positive, not {max_chunk}")
        executable = _find_executable(argv[0], cwd, env)
        popen, outputs, input_fd = _spawn(executable, argv, cwd=cwd, env=env, pty=pty)
        return cls(
            popen,
            outputs=outputs,
            input_fd=input_fd,
            pty=pty,
            on_output=on_output,
            max_chunk=max_chunk,
            linger=linger,
        )

    @property
    def pid(self) -> int:
        """The agent's pid, which is also its process group and session id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process is reaped (its output may still be pending)."""
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the exit and for the last output to be delivered; return the exit code.

        The code is negative (``-signal``) if a signal killed the process. Raises what
        ``on_output`` raised, if it did. Cancelling a ``wait()`` does not affect the process.
        """
        return await asyncio.shield(self._done)

    async def cancel(self, grace: float = 5.0) -> int:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code.

        SIGKILL goes to the group whether or not the agent left within ``grace``, so
        members that ignore SIGTERM do not outlive a cancel. Idempotent: a second call
        (with any grace) waits for the first; a call after the exit only returns the code
        and signals nothing, as the group id is no longer known to be ours.
        """
        self._start_terminating(grace)
        return await self.wait()

    async def send_input(self, data: bytes) -> None:
        """Write all of ``data`` to the agent's stdin (or the pty), waiting while it is full.

        Raises :class:`SessionInputClosed` after :meth:`close_input`, once the process
        is done, or if the agent closed its end.
        """
        async with self._input_lock:
            view = memoryview(data)
            while view:
                fd = self._input_fd
                if fd is None:
                    raise SessionInputClosed()
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    await self._writable(fd)
                except OSError as exc:  # EPIPE (pipe), EIO (pty after hang-up)
                    raise SessionInputClosed() from exc

    async def close_input(self) -> None:
        """Signal end of input, after any input being sent.

        Without a pty, stdin is closed and the agent reads end of file. With a pty the
        terminal stays open: this types the terminal's end-of-file character (Ctrl-D),
        which a reader in canonical mode sees as end of file at the start of a line.
        """
        if self._pty:
            fd = self._input_fd
            if fd is None:
                return
            try:
                eof = termios.tcgetattr(fd)[6][termios.VEOF]
            except termios.error:
                return  # the terminal is gone; there is nobody to tell
            with contextlib.suppress(SessionInputClosed):
                await self.send_input(eof if isinstance(eof, bytes) else bytes([eof]))
            return
        async with self._input_lock:
            self._close_input()

    def resize(self, rows: int, cols: int) -> None:
        """Set the pty's window size; the kernel sends SIGWINCH to the foreground group."""
        if not self._pty:
            raise UsageError("only a session started with a pty has a window size")
        if self._input_fd is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetwinsize(self._input_fd, (rows, cols))

    # -- internals ------------------------------------------------------------------

    async def _run(self) -> int:
        try:
            await self._exited
            if self._terminating is not None:
                await self._terminating  # it may still send SIGKILL to the group
            code = _reap(self._popen)
            await asyncio.gather(*self._pumps)
        finally:
            self._close_input()
        if self._failure is not None:
            raise self._failure
        return code

    def _start_terminating(self, grace: float) -> None:
        if self._terminating is None and self._popen.returncode is None:
            self._terminating = self._loop.create_task(self._terminate(grace))

    async def _terminate(self, grace: float) -> None:
        self._signal_group(signal.SIGTERM)
        await asyncio.wait((self._exited,), timeout=grace)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: signal.Signals) -> None:
        # Safe only while the agent is not reaped (see the invariants): _run reaps
        # after _terminate has finished, and _start_terminating refuses afterwards.
        assert self._popen.returncode is None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signum)

    def _watch_exit(self) -> None:
        """Set ``self._exited`` when the agent exits, without reaping it."""
        pid = self._popen.pid
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # ENOSYS on old kernels, EPERM under old seccomp profiles
            threading.Thread(
                target=self._wait_exit_in_thread, name=f"agent {pid} exit", daemon=True
            ).start()
            return

        def on_exit() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._set_exited()

        self._loop.add_reader(pidfd, on_exit)

    def _wait_exit_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._set_exited)

    def _set_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)

    async def _pump(self, stream: str, fd: int) -> None:
        """Deliver ``fd``'s output in chunks until end of stream (or linger runs out)."""
        budget = self._linger
        try:
            while True:
                try:
                    data = os.read(fd, self._max_chunk)
                except BlockingIOError:
                    budget = await self._readable(fd, budget)
                    if budget < 0:
                        return  # a descendant holds the stream open; stop listening
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:  # pty: every slave descriptor is closed
                        return
                    raise
                if not data:
                    return
                try:
                    await self._on_output(stream, data)
                except Exception as exc:
                    if self._failure is None:
                        self._failure = exc
                    self._start_terminating(FAILURE_GRACE)
                    return
        finally:
            os.close(fd)

    async def _readable(self, fd: int, budget: float) -> float:
        """Wait until ``fd`` is readable; return the linger budget left, negative if spent."""
        readable = self._loop.create_future()
        self._loop.add_reader(fd, _wake, readable)
        try:
            if not self._exited.done():
                await asyncio.wait((readable, self._exited), return_when=asyncio.FIRST_COMPLETED)
            if not readable.done():
                started = self._loop.time()
                await asyncio.wait((readable,), timeout=max(budget, 0.0))
                budget -= self._loop.time() - started
        finally:
            self._loop.remove_reader(fd)
        return max(budget, 0.0) if readable.done() else -1.0

    async def _writable(self, fd: int) -> None:
        waiter = self._loop.create_future()
        self._input_waiter = waiter
        self._loop.add_writer(fd, _wake, waiter)
        try:
            await waiter
        finally:
            self._input_waiter = None
            if self._input_fd == fd:  # else _close_input already unregistered and closed it
                self._loop.remove_writer(fd)

    def _close_input(self) -> None:
        fd, self._input_fd = self._input_fd, None
        if fd is None:
            return
        if self._input_waiter is not None:
            self._loop.remove_writer(fd)
            if not self._input_waiter.done():
                self._input_waiter.set_exception(SessionInputClosed())
        os.close(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _find_executable(name: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The path ``execv`` will run for ``name``, looked up the way the child would."""
    search_path = env.get("PATH", os.defpath)
    if "/" in name:
        candidate = os.path.join(cwd, name)  # an absolute name stays as it is
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise UsageError(
            f"cannot start the agent: {name} is not an executable file",
            hint="check the path, and that the file has execute permission (chmod +x)",
        )
    found = shutil.which(name, path=search_path)
    if found is None:
        raise UsageError(
            f"cannot start the agent: {name} not found on the session's PATH",
            hint=f"install {name}, or give its full path; PATH was {search_path}",
        )
    return os.path.abspath(found)


def _spawn(
    executable: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], pty: bool
) -> tuple[subprocess.Popen[bytes], list[tuple[str, int]], int]:
    """Fork and exec the agent; return it, its output streams and its input descriptor.

    Synchronous on purpose, as in ``asyncio.create_subprocess_exec``: the spawn returns
    as soon as the exec has succeeded or failed, which is quick, and needs no thread.
    """
    ours: list[int] = []  # kept by the daemon: closed here only if the spawn fails
    theirs: list[int] = []  # the child's ends: always closed here after the spawn
    try:
        if pty:
            master, slave = os.openpty()
            ours.append(master)
            theirs.append(slave)
            termios.tcsetwinsize(master, DEFAULT_WINSIZE)
            input_fd = os.dup(master)  # its own lifetime: the reader closes `master`
            ours.append(input_fd)
            stdin = stdout = stderr = slave
            outputs = [("pty", master)]
            args = [sys.executable, "-I", "-S", "-c", _PTY_TRAMPOLINE, executable, *argv]
            program = sys.executable
        else:
            stdin, input_fd = os.pipe()
            out_read, stdout = os.pipe()
            err_read, stderr = os.pipe()
            ours += [input_fd, out_read, err_read]
            theirs += [stdin, stdout, stderr]
            outputs = [("stdout", out_read), ("stderr", err_read)]
            args, program = list(argv), executable
        for fd in ours:
            os.set_blocking(fd, False)
        popen = subprocess.Popen(
            args,
            executable=program,
            cwd=cwd,
            env=dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,
        )
    except BaseException as exc:
        for fd in ours:
            os.close(fd)
        if not isinstance(exc, OSError | ValueError):  # ValueError: a NUL in argv or env
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"cannot start the agent {argv[0]} in {cwd}: {reason}",
            hint="check that the program runs when started by hand in that directory",
        ) from exc
    finally:
        for fd in theirs:
            os.close(fd)
    return popen, outputs, input_fd


def _reap(popen: subprocess.Popen[bytes]) -> int:
    # The agent has exited (a zombie), so this wait returns at once.
    return popen.wait()
