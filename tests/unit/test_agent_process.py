"""Agent processes with real children: output capture, backpressure, input, exit, cancel.

Children are small Python or shell programs. The tests synchronise on what the
children print (a pid, "ready") and on pidfds, never on sleeps; the few short
timeouts below only bound negative checks ("the child has *not* finished yet").
Every process a test starts is cancelled on the way out.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from starmux.daemon.agent_process import (
    DEFAULT_WINSIZE,
    AgentProcess,
    SessionInputClosed,
)
from starmux.errors import UsageError

from ..timeouts import EVENT

TIMEOUT = EVENT  # bounds every wait for something that must happen
NEGATIVE_CHECK = 0.3  # how long a check that something does *not* happen watches

PY = sys.executable


class Capture:
    """An ``on_output`` that records every chunk and lets a test wait for text."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))
        async with self._changed:
            self._changed.notify_all()

    def text(self, stream: str) -> bytes:
        return b"".join(data for name, data in self.chunks if name == stream)

    def calls(self, stream: str) -> int:
        return sum(1 for name, _ in self.chunks if name == stream)

    async def until(self, stream: str, needle: bytes) -> bytes:
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(lambda: needle in self.text(stream))
        return self.text(stream)


Spawn = Callable[..., Awaitable[AgentProcess]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    started: list[AgentProcess] = []

    async def start(
        argv: Sequence[str],
        on_output: Callable[[str, bytes], Awaitable[None]],
        *,
        pty: bool = False,
        cwd: Path = tmp_path,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> AgentProcess:
        proc = await AgentProcess.start(
            argv,
            cwd=cwd,
            env=dict(os.environ) if env is None else env,
            pty=pty,
            on_output=on_output,
            **options,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            await asyncio.wait_for(proc.cancel(grace=0), TIMEOUT)


def python(code: str) -> list[str]:
    return [PY, "-c", code]


async def wait_exit_of(pidfd: int) -> None:
    """Wait until the process behind ``pidfd`` (any process, not only a child) has exited."""
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await asyncio.wait_for(exited, TIMEOUT)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def still_running(pid: int) -> bool:
    """True while our child ``pid`` has not exited (checked without reaping it)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- output -----------------------------------------------------------------------

LINES = 10_000
# Flushes every line, like a chatty agent (or any child run with PYTHONUNBUFFERED).
NUMBERED_LINES = f"""
import sys
for i in range({LINES}):
    print(f"line {{i:05d}}", flush=True)
    if i % 4000 == 0:
        print(f"err {{i}}", file=sys.stderr, flush=True)
    if i == {LINES // 2}:
        print("half", file=sys.stderr, flush=True)
"""


async def test_output_is_exact_per_stream_and_read_in_chunks(spawn: Spawn) -> None:
    capture = Capture()
    half_written = asyncio.Event()

    async def stalls_once(stream: str, data: bytes) -> None:
        await capture(stream, data)
        if stream == "stderr" and b"half" in data:
            half_written.set()
        elif stream == "stdout" and capture.calls("stdout") == 1:
            # Until the child has written half its lines (55 kB, less than a pipe
            # holds), so they wait in the pipe: the next reads must take them in
            # max_chunk pieces, not a line at a time.
            await half_written.wait()

    proc = await spawn(python(NUMBERED_LINES), stalls_once)

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0

    assert capture.text("stdout") == b"".join(b"line %05d\n" % i for i in range(LINES))
    assert capture.text("stderr") == b"err 0\nerr 4000\nhalf\nerr 8000\n"
    assert capture.calls("stdout") < LINES
    assert max(len(data) for _, data in capture.chunks) == 16384  # the default max_chunk


async def test_chunks_never_exceed_max_chunk(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(
        python("import sys; sys.stdout.buffer.write(b'x' * 5000)"), capture, max_chunk=100
    )

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0

    assert capture.text("stdout") == b"x" * 5000
    assert all(len(data) <= 100 for _, data in capture.chunks)


async def test_a_slow_consumer_blocks_the_child_and_loses_nothing(spawn: Spawn) -> None:
    total = 10 * 1024 * 1024
    release = asyncio.Event()
    first_chunk = asyncio.Event()
    child_done = asyncio.Event()
    received = bytearray()

    async def slow(stream: str, data: bytes) -> None:
        if stream == "stderr":
            child_done.set()
            return
        received.extend(data)
        first_chunk.set()
        await release.wait()

    writer = f"""
import sys
block = b"0123456789abcdef" * 4096
for _ in range({total} // len(block)):
    sys.stdout.buffer.write(block)
sys.stdout.flush()
sys.stderr.write("wrote everything")
"""
    proc = await spawn(python(writer), slow)
    await asyncio.wait_for(first_chunk.wait(), TIMEOUT)

    # The consumer holds the first chunk: the child fills the pipe and must block.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(child_done.wait(), NEGATIVE_CHECK)
    assert still_running(proc.pid)
    assert proc.returncode is None
    assert 0 < len(received) <= 16384

    release.set()
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert len(received) == total
    assert bytes(received[:32]) == b"0123456789abcdef" * 2
    assert child_done.is_set()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("pass", 0),
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
    ],
)
async def test_exit_codes(spawn: Spawn, code: str, expected: int) -> None:
    proc = await spawn(python(code), Capture())

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == expected
    assert proc.returncode == expected


async def test_env_is_exactly_what_the_caller_gives(spawn: Spawn, tmp_path: Path) -> None:
    capture = Capture()
    env = {"PATH": os.environ["PATH"], "STARMUX_SESSION": "s1"}
    proc = await spawn(["env"], capture, env=env)

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert sorted(capture.text("stdout").decode().splitlines()) == sorted(
        f"{key}={value}" for key, value in env.items()
    )


async def test_runs_in_cwd_and_finds_programs_relative_to_it(spawn: Spawn, tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\npwd\n")
    script.chmod(0o755)
    capture = Capture()
    proc = await spawn(["./agent.sh"], capture, cwd=tmp_path)

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert capture.text("stdout") == f"{tmp_path}\n".encode()


async def test_wait_stops_listening_to_a_descendant_that_keeps_stdout(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(["sh", "-c", "sleep 100 & echo $!; echo done"], capture, linger=0.2)
    try:
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        assert capture.text("stdout").endswith(b"done\n")
    finally:
        os.kill(int(capture.text("stdout").split()[0]), signal.SIGKILL)


async def test_a_failing_consumer_stops_the_process_and_wait_raises(spawn: Spawn) -> None:
    async def broken(stream: str, data: bytes) -> None:
        raise RuntimeError("disk full")

    proc = await spawn(python("import sys; print('hi', flush=True); sys.stdin.read()"), broken)

    with pytest.raises(RuntimeError, match="disk full"):
        await asyncio.wait_for(proc.wait(), TIMEOUT)
    assert proc.returncode == -signal.SIGTERM
    with pytest.raises(RuntimeError, match="disk full"):
        await proc.cancel()


# -- cancel -----------------------------------------------------------------------

GRACEFUL = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
sys.stdin.read()
"""
STUBBORN = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
sys.stdin.read()
"""
# Leaves a grandchild that ignores SIGTERM, then exits gracefully on SIGTERM itself.
GRACEFUL_WITH_STUBBORN_CHILD = """
import signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited across exec by the child
child = subprocess.Popen(["sleep", "100"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(child.pid, flush=True)
sys.stdin.read()
"""


async def test_cancel_lets_a_graceful_child_exit_0(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(python(GRACEFUL), capture)
    await capture.until("stdout", b"ready\n")

    assert await asyncio.wait_for(proc.cancel(grace=TIMEOUT), TIMEOUT) == 0


async def test_cancel_kills_a_child_that_ignores_sigterm(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(python(STUBBORN), capture)
    await capture.until("stdout", b"ready\n")

    assert await asyncio.wait_for(proc.cancel(grace=0.5), TIMEOUT) == -signal.SIGKILL


async def test_cancel_kills_grandchildren(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(["sh", "-c", "sleep 100 & echo $!; wait"], capture)
    sleeper = os.pidfd_open(int(await capture.until("stdout", b"\n")))

    assert await asyncio.wait_for(proc.cancel(grace=TIMEOUT), TIMEOUT) == -signal.SIGTERM
    await wait_exit_of(sleeper)


async def test_cancel_kills_the_rest_of_the_group_after_a_graceful_exit(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(python(GRACEFUL_WITH_STUBBORN_CHILD), capture)
    sleeper = os.pidfd_open(int(await capture.until("stdout", b"\n")))

    assert await asyncio.wait_for(proc.cancel(grace=TIMEOUT), TIMEOUT) == 0
    await wait_exit_of(sleeper)


async def test_cancel_is_idempotent(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(python(STUBBORN), capture)
    await capture.until("stdout", b"ready\n")

    codes = await asyncio.wait_for(
        asyncio.gather(proc.cancel(grace=0.2), proc.cancel(grace=TIMEOUT)), TIMEOUT
    )
    assert list(codes) == [-signal.SIGKILL, -signal.SIGKILL]
    assert await proc.cancel() == -signal.SIGKILL


async def test_cancel_after_exit_returns_the_exit_code(spawn: Spawn) -> None:
    proc = await spawn(python("raise SystemExit(5)"), Capture())
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 5

    assert await proc.cancel() == 5


# -- input ------------------------------------------------------------------------


async def test_input_round_trip_through_a_pipe(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(["cat"], capture)

    await proc.send_input(b"hello\n")
    await capture.until("stdout", b"hello\n")
    await proc.send_input(b"again")
    await proc.close_input()

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert capture.text("stdout") == b"hello\nagain"
    with pytest.raises(SessionInputClosed):
        await proc.send_input(b"late")


async def test_input_larger_than_the_pipe_waits_for_the_reader(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(["cat"], capture)
    data = bytes(range(256)) * 4096  # 1 MiB, far more than a pipe holds

    await asyncio.wait_for(proc.send_input(data), TIMEOUT)
    await proc.close_input()

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert capture.text("stdout") == data


async def test_input_after_the_agent_closed_stdin_is_refused(spawn: Spawn) -> None:
    capture = Capture()
    closer = "import os, signal; os.close(0); print('closed', flush=True); signal.pause()"
    proc = await spawn(python(closer), capture)
    await capture.until("stdout", b"closed\n")

    with pytest.raises(SessionInputClosed):  # EPIPE: nobody holds the read end
        await proc.send_input(b"anyone?\n")
    assert proc.returncode is None


async def test_pending_input_fails_when_the_process_is_done(spawn: Spawn) -> None:
    capture = Capture()
    # Holds stdin open without reading it, so a large write blocks.
    proc = await spawn(python("import signal; print('ready', flush=True); signal.pause()"), capture)
    await capture.until("stdout", b"ready\n")
    sending = asyncio.ensure_future(proc.send_input(b"x" * (4 * 1024 * 1024)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(sending), NEGATIVE_CHECK)

    await asyncio.wait_for(proc.cancel(grace=0), TIMEOUT)

    with pytest.raises(SessionInputClosed):
        await asyncio.wait_for(sending, TIMEOUT)


# -- pty --------------------------------------------------------------------------

TERMINAL_PROBE = """
import os, sys
tty = open("/dev/tty", "w")  # fails without a controlling terminal
print(sys.stdin.isatty(), sys.stdout.isatty(), sys.stderr.isatty())
print("session leader", os.getsid(0) == os.getpid(), "foreground", os.tcgetpgrp(0) == os.getpgrp())
print("size", *os.get_terminal_size())
"""


async def test_pty_is_the_controlling_terminal(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(python(TERMINAL_PROBE), capture, pty=True)

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    rows, cols = DEFAULT_WINSIZE
    assert capture.text("pty") == (
        b"True True True\r\nsession leader True foreground True\r\nsize %d %d\r\n" % (cols, rows)
    )
    assert {name for name, _ in capture.chunks} == {"pty"}


async def test_pty_input_round_trip_and_end_of_file(spawn: Spawn) -> None:
    capture = Capture()
    proc = await spawn(["cat"], capture, pty=True)

    await proc.send_input(b"hello\n")
    await capture.until("pty", b"hello\r\nhello\r\n")  # the terminal's echo, then cat
    await proc.close_input()  # Ctrl-D

    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    with pytest.raises(SessionInputClosed):
        await proc.send_input(b"late\n")


async def test_pty_resize_reaches_the_agent(spawn: Spawn) -> None:
    capture = Capture()
    probe = "import os, sys\nfor _ in sys.stdin: print('size', *os.get_terminal_size())"
    proc = await spawn(python(probe), capture, pty=True)

    await proc.send_input(b"\n")
    await capture.until("pty", b"size 80 24")
    proc.resize(50, 132)
    await proc.send_input(b"\n")
    await capture.until("pty", b"size 132 50")
    await proc.close_input()
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0


async def test_resize_without_a_pty_is_refused(spawn: Spawn) -> None:
    proc = await spawn(["true"], Capture())
    with pytest.raises(UsageError):
        proc.resize(10, 10)
    await asyncio.wait_for(proc.wait(), TIMEOUT)


async def test_pty_child_gets_the_same_signal_dispositions(spawn: Spawn) -> None:
    """The trampoline is Python, which ignores SIGPIPE; the agent must not inherit that."""
    piped, tty = Capture(), Capture()
    for capture, pty in ((piped, False), (tty, True)):
        proc = await spawn(["grep", "^SigIgn", "/proc/self/status"], capture, pty=pty)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0

    assert tty.text("pty").replace(b"\r\n", b"\n") == piped.text("stdout")


# -- refusals and resources -------------------------------------------------------


async def test_missing_executable_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="starmux-no-such-agent") as caught:
        await AgentProcess.start(
            ["starmux-no-such-agent", "--help"],
            cwd=tmp_path,
            env=dict(os.environ),
            pty=False,
            on_output=Capture(),
        )
    assert caught.value.hint is not None
    assert "PATH" in caught.value.hint


@pytest.mark.parametrize("pty", [False, True])
async def test_non_executable_file_is_a_usage_error(tmp_path: Path, pty: bool) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(UsageError, match=r"agent\.sh") as caught:
        await AgentProcess.start(
            [str(script)], cwd=tmp_path, env=dict(os.environ), pty=pty, on_output=Capture()
        )
    assert caught.value.hint is not None


async def test_exit_is_noticed_without_pidfds(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EPERM, "pidfd_open blocked by seccomp")

    monkeypatch.setattr(os, "pidfd_open", refuse)
    capture = Capture()
    proc = await spawn(python("print('out'); raise SystemExit(7)"), capture)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 7
    assert capture.text("stdout") == b"out\n"

    stubborn = await spawn(python(STUBBORN), capture)
    await capture.until("stdout", b"ready\n")
    assert await asyncio.wait_for(stubborn.cancel(grace=0.2), TIMEOUT) == -signal.SIGKILL


async def test_no_descriptor_leaks(tmp_path: Path) -> None:
    async def run(argv: list[str], *, pty: bool, cancel: bool = False) -> None:
        capture = Capture()
        proc = await AgentProcess.start(
            argv, cwd=tmp_path, env=dict(os.environ), pty=pty, on_output=capture
        )
        if cancel:
            await capture.until("pty" if pty else "stdout", b"ready")
            await asyncio.wait_for(proc.cancel(grace=0), TIMEOUT)
        else:
            await proc.send_input(b"input\n")
            await proc.close_input()
            await asyncio.wait_for(proc.wait(), TIMEOUT)

    await run(["cat"], pty=False)  # warm up: the loop's own lazily created descriptors
    before = open_fds()
    for pty in (False, True):
        await run(["cat"], pty=pty)
        await run(python(STUBBORN), pty=pty, cancel=True)
        with pytest.raises(UsageError):  # fails before anything is opened
            await run(["starmux-no-such-agent"], pty=pty)
        with pytest.raises(UsageError):  # fails in the spawn, after opening pipes or a pty
            await AgentProcess.start(
                ["true"], cwd=tmp_path / "gone", env={}, pty=pty, on_output=Capture()
            )
    assert open_fds() == before
