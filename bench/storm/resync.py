"""Controller resync after a relay restart (part 2 of ``python -m bench.storm``), parent side.

1. A fresh relay; a controller (``client.actions.init`` with the relay's one-time
   token); ``bench.common.daemon_host`` runs the machine daemons in one load process.
2. Every daemon is paired for real: its pairing code is read from its terminal
   output and given to ``client.actions.pair`` (XXpsk3 through the relay, grant,
   comparison code confirmed), one after the other, as a person would.
3. Each daemon gets history (a finished session of ``lines`` output lines) that
   no controller has seen yet.
4. The relay is restarted (SIGTERM: restart notices, then a new process). From the
   new relay's "listening" line, a fresh :class:`client.live.LiveController` (what
   ``starmux watch`` starts) connects and the clock runs until every machine is
   *live*: reconnected, Noise_KK re-run, its whole log resynced into the cache.
   The cache's cursors are then checked against each daemon's last seq.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from bench.common.procs import LoadProcess, RelayProcess, Sampler, free_port
from starmux.client import actions
from starmux.client.cache import Cache
from starmux.client.live import LiveController
from starmux.client.store import ControllerStore
from starmux.pairing_code import parse_pairing_code

PAIR_TIMEOUT = 60.0
LIVE_TIMEOUT = 60.0


async def run_resync(
    tmp: Path, *, machines: int, lines: int, env: dict[str, str], say: Any
) -> dict[str, Any]:
    relay = RelayProcess(tmp / "resync-relay", free_port(), env, tmp / "resync-relay.log")
    await relay.start()
    host: LoadProcess | None = None
    try:
        setup_started = time.monotonic()
        home = tmp / "controller"
        token_file = Path(str(relay.started["registration_token_file"]))
        await actions.init(
            home,
            relay_url=relay.url,
            token=(await asyncio.to_thread(token_file.read_text)).strip(),
            name="storm-controller",
        )
        host = await LoadProcess.start(
            "daemon host", "bench.common.daemon_host",
            "--url", relay.url, "--count", str(machines), "--root", str(tmp / "daemons"),
            log_path=tmp / "daemons.log",
        )  # fmt: skip
        pair_started = time.monotonic()
        for done in range(machines):
            event = await host.expect("code", within=PAIR_TIMEOUT)
            await actions.pair(
                home, parse_pairing_code(event["code"]), confirm=lambda card, comparison: True
            )
            if (done + 1) % 25 == 0:
                say(f"  paired {done + 1}/{machines}")
        await host.expect("all-paired", within=PAIR_TIMEOUT)
        paired_at = time.monotonic()
        await host.send("history", lines=lines)
        history = await host.expect("history", within=300)
        last_seq: dict[str, int] = history["last_seq"]
        setup_seconds = time.monotonic() - setup_started

        await host.send("arm", since=time.monotonic())
        await host.expect("armed", within=30)
        signalled = time.monotonic()
        exited = await relay.stop(signal.SIGTERM)
        await relay.start()
        ready = relay.ready_at
        sampler = Sampler(relay.pid)
        live_at, verified, connected_at, stuck = await _controller_resync(home, machines, last_seq)
        await sampler.stop()
        try:
            back = await host.expect("back", within=30)
        except TimeoutError:
            await host.send("report")
            back = await host.expect("report", within=30)
        end = max(live_at.values(), default=ready)
        daemons_back = sorted(t - ready for t in back["times"])
        return {
            "machines": machines,
            "lines": lines,
            "events": sum(last_seq.values()),
            "setup_s": setup_seconds,
            "pairing_s": paired_at - pair_started,
            "history_s": float(history["seconds"]),
            "stop_s": exited - signalled,
            "start_s": ready - exited,
            "controller_connected_s": connected_at - ready,
            "daemons_back_s": daemons_back[-1] if daemons_back else float("nan"),
            "daemons_back": len(daemons_back),
            "live": len(live_at),
            "all_live_s": end - ready,
            "live_p50_s": _quantile(sorted(t - ready for t in live_at.values()), 0.5),
            "cursors_ok": verified,
            "relay": sampler.between(ready, end),
            "daemon_stats": back["stats"],
            "not_live": stuck,
            "live_timeout": LIVE_TIMEOUT,
        }
    finally:
        if host is not None:
            await host.stop()
        await relay.stop(signal.SIGKILL)


async def _controller_resync(
    home: Path, machines: int, last_seq: dict[str, int]
) -> tuple[dict[bytes, float], int, float, list[str]]:
    """Start a LiveController now; wait until every machine is live. Returns when each
    went live, how many cursors equal their daemon's last seq, when it connected, and
    what the controller thinks of each machine that did not go live."""
    stuck: list[str] = []
    live_at: dict[bytes, float] = {}
    async with ControllerStore(home) as store:
        controller = LiveController(store, await store.config())
        await controller.start()
        connected = time.monotonic()
        try:
            deadline = connected + LIVE_TIMEOUT
            while len(live_at) < machines and time.monotonic() < deadline:
                for key, machine in controller.machines.items():
                    if key not in live_at and machine.live.is_set():
                        live_at[key] = time.monotonic()
                await asyncio.sleep(0.005)
            for key, machine in controller.machines.items():
                if key not in live_at:
                    stuck.append(
                        f"{machine.card.name}: online={machine.online} "
                        f"handshake={'pending' if machine.handshake else 'none'} "
                        f"channel={'open' if machine.channel else 'none'}"
                    )
        finally:
            await controller.close()
        cache = Cache(store.db)
        verified = 0
        for key in controller.machines:
            cursor = await cache.cursor(key)
            verified += cursor.seq == last_seq.get(key.hex(), -1)
    return live_at, verified, connected, stuck


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]
