"""A relay that tampers with or replays a frame: the channel ends, a fresh handshake
and a resync follow, and nothing is lost or repeated."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..timeouts import scaled
from .cluster import Paired, python
from .daemon_process import DaemonProcess, run_cli
from .relay_process import RelayProcess
from .tamper_proxy import TamperOnce, TamperProxy
from .watcher import Watcher


@pytest.fixture
def proxy_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=scaled(5))


def test_tampered_and_replayed_frames_end_the_channel_and_resync(
    tmp_path: Path,
    relay: RelayProcess,
    daemons: list[DaemonProcess],
    proxy_loop: asyncio.AbstractEventLoop,
) -> None:
    policy = TamperOnce(flip_at=4, replay_at=9)
    proxy = asyncio.run_coroutine_threadsafe(
        TamperProxy(relay.url, policy).start(), proxy_loop
    ).result(timeout=scaled(10))
    # The controller reaches the relay only through the tampering proxy.
    controller = tmp_path / "controller"
    init = run_cli(
        controller,
        "init",
        "--relay",
        proxy.url,
        "--token",
        relay.registration_token or "",
        "--name",
        "laptop",
    )
    assert init.returncode == 0, init.stderr
    workdir = tmp_path / "work"
    workdir.mkdir()
    daemon = DaemonProcess(
        tmp_path / "box", relay.url, name="box", extra_args=["--allow-root", str(tmp_path)]
    ).start()
    daemons.append(daemon)
    assert run_cli(controller, "pair", daemon.pairing_code(), "--yes").returncode == 0
    paired = Paired(relay, controller, daemon, workdir)

    # The rest of the output waits until the watcher shows the first line, so it
    # flows live (many frames to tamper with), however slowly this machine starts
    # the watcher: otherwise a late watcher gets it all in a few sync pages.
    gate = workdir / "gate"
    code = (
        "import os, sys, time\nprint(1, flush=True)\n"
        "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.01)\n"
        "for i in range(2, 3001):\n    print(i, flush=True)\n"
        "    if i % 100 == 0:\n        time.sleep(0.02)\n"
    )
    session = paired.run(*python(code), str(gate))
    watcher = Watcher(controller, session)
    watcher.wait_lines(1)
    gate.touch()
    assert watcher.finish() == 0, b"".join(watcher.errors).decode(errors="replace")
    assert policy.flipped and policy.replayed
    assert watcher.lines == [f"{i}\n".encode() for i in range(1, 3001)]
    asyncio.run_coroutine_threadsafe(proxy.close(), proxy_loop).result(timeout=scaled(10))
