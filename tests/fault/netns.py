"""Linux network namespaces that a fault test creates, uses and removes.

Every namespace is named ``smxf<pid>-<n><role>``: the pid of the pytest process that
made it, so parallel runs never collide and leftovers of a killed run are recognised
(and removed) by the next one; ``n`` counts the topologies built by that process.

Processes are put inside a namespace without changing how they are started:
:meth:`NetNamespace.call` runs a function on a thread that joined the namespace
(``setns(2)`` moves only the calling thread), and every process that thread forks —
the relay, the daemon, ``starmux`` commands — is born inside it. So the integration
helpers (:class:`~tests.integration.daemon_process.DaemonProcess`, ``run_cli``,
:class:`~tests.integration.watcher.Watcher`...) are reused as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

PREFIX = "smxf"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}(\d+)-\d+[a-z]+$")
_topologies = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)

P = ParamSpec("P")
T = TypeVar("T")


class NetworkSetupError(Exception):
    """The machine cannot host the fault topology; the message says what to do."""


def missing_requirement() -> str | None:
    """Why namespaces cannot be built here (and what to install), or None."""
    if os.geteuid() != 0:
        return (
            "tests/fault creates network namespaces, veth pairs and iptables rules: "
            "it must run as root (CAP_NET_ADMIN + CAP_SYS_ADMIN), as CI does"
        )
    if shutil.which("ip") is None:
        return "tests/fault needs the `ip` command: install iproute2 (apt-get install iproute2)"
    if shutil.which("iptables") is None:
        return (
            "tests/fault needs `iptables` (nft backend) for packet loss: "
            "install it (apt-get install iptables)"
        )
    return None


def command(*argv: str) -> str:
    """Run a setup command; its failure (with stderr) becomes a NetworkSetupError."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetworkSetupError(
            f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(name: str) -> None:
    """SIGKILL what still runs in namespace ``name`` (only ever one of ours)."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_stale() -> list[str]:
    """Remove namespaces of our prefix whose pytest process is gone; returns their names."""
    removed = []
    for line in command("ip", "netns", "list").splitlines():
        name = line.split(" ", 1)[0]
        match = _NAME.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        _kill_inside(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        removed.append(name)
    return removed


def new_tag() -> str:
    return f"{PREFIX}{os.getpid()}-{next(_topologies)}"


def _enter(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class NetNamespace:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name
        self._executor: ThreadPoolExecutor | None = None

    def create(self) -> NetNamespace:
        command("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=self.name,
            initializer=_enter,
            initargs=(self.path,),
        )
        return self

    def ip(self, *args: str) -> str:
        return command("ip", "-n", self.name, *args)

    def exec(self, *argv: str) -> str:
        return command("ip", "netns", "exec", self.name, *argv)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a thread inside this namespace: sockets it opens
        and processes it starts live here."""
        assert self._executor is not None, "namespace not created"
        return self._executor.submit(fn, *args, **kwargs).result()

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Start a daemon thread that runs ``target`` inside this namespace."""

        def run() -> None:
            _enter(self.path)
            target()

        thread = threading.Thread(target=run, name=f"{self.name}-{name}", daemon=True)
        thread.start()
        return thread

    def delete(self) -> None:
        """Kill what still runs inside (so no call into it can hang), then remove it."""
        _kill_inside(self.name)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        command("ip", "netns", "del", self.name)


def veth(
    a: NetNamespace, a_dev: str, a_address: str, b: NetNamespace, b_dev: str, b_address: str
) -> None:
    """A veth pair between two namespaces (never visible in the host's namespace)."""
    command(
        "ip", "link", "add", a_dev, "netns", a.name, "type", "veth",
        "peer", "name", b_dev, "netns", b.name,
    )  # fmt: skip
    for ns, dev, address in ((a, a_dev, a_address), (b, b_dev, b_address)):
        ns.ip("addr", "add", address, "dev", dev)
        ns.ip("link", "set", dev, "up")
