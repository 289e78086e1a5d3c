"""``starmux doctor``: check what actually matters, and say what to do about failures.

For a controller home and/or a machine home (one folder may hold both):
key and database permissions; the relay reached *with the real protocol*
(WebSocket upgrade, the pinned relay key, signature auth, and a frame routed back
to us through the relay's routing); clock skew against the relay; whether this
home's daemon runs; how many outbox commands wait.
"""

from __future__ import annotations

import asyncio
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nacl.utils
import websockets

from starmux.errors import ConnectionLost, CryptoError, StarmuxError
from starmux.identity import NodeKeys, Role
from starmux.relay_auth import RelayKeyMismatch

from .link import Data, RelayLink, RelayUnreachable

MAX_SKEW = 30.0
ROUND_TRIP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _permissions(home: Path) -> list[Check]:
    checks = []
    if not home.exists():
        return [
            Check(
                "home",
                False,
                f"{home} does not exist",
                "run `starmux init` (controller) or `starmux daemon start` (machine)",
            )
        ]
    mode = stat.S_IMODE(home.stat().st_mode)
    checks.append(
        Check(
            "home permissions",
            not mode & 0o077,
            f"{home} is {mode:o}",
            "" if not mode & 0o077 else f"chmod 700 {home}",
        )
    )
    loose = []
    for path in sorted(home.iterdir()):
        if path.suffix in (".key", ".sqlite3") or path.name.endswith(("-wal", "-shm")):
            file_mode = stat.S_IMODE(path.stat().st_mode)
            if file_mode & 0o077:
                loose.append(f"{path.name} ({file_mode:o})")
    checks.append(
        Check(
            "key and database permissions",
            not loose,
            "all 0600" if not loose else "readable by others: " + ", ".join(loose),
            ""
            if not loose
            else f"chmod 600 {home}/*.key {home}/*.sqlite3*; if "
            "others could have read a key, revoke that node and pair again",
        )
    )
    return checks


async def _relay_checks(
    url: str, keys: NodeKeys, role: Role, name: str, pinned: bytes | None
) -> list[Check]:
    link = RelayLink(url, keys, keys.card(role, name), pinned_relay_key=pinned)
    try:
        auth = await link.connect()
    except RelayKeyMismatch as exc:
        return [Check("relay identity", False, exc.message, exc.hint or "")]
    except RelayUnreachable as exc:
        cause = exc.__cause__
        if isinstance(cause, websockets.InvalidStatus):
            return [
                Check(
                    "relay reachable",
                    False,
                    f"{url} answered HTTP {cause.response.status_code} but refused the WebSocket "
                    "upgrade",
                    "check that the URL points at a starmux relay (ws://HOST:PORT), and "
                    "that any proxy in front of it forwards WebSocket upgrades on /v1/ws",
                )
            ]
        return [Check("relay reachable", False, exc.message, exc.hint or "")]
    except (ConnectionLost, CryptoError, StarmuxError) as exc:
        return [
            Check(
                "relay authentication",
                False,
                exc.message,
                exc.hint or "the relay refused this node's signature or key",
            )
        ]
    checks = [
        Check(
            "relay reachable",
            True,
            f"{url}: WebSocket, pinned key and signature auth ok (status {auth.status.value})",
        )
    ]
    try:
        marker = nacl.utils.random(16)
        started = time.perf_counter()
        await link.send_data(keys.sign_public, marker)  # an echo through the routing
        async with asyncio.timeout(ROUND_TRIP_TIMEOUT):
            while True:
                event = await link.next_event()
                if isinstance(event, Data) and event.body == marker:
                    break
        rtt = (time.perf_counter() - started) * 1000
        checks.append(Check("routed round trip", True, f"{rtt:.1f} ms through the relay"))
    except (TimeoutError, StarmuxError) as exc:
        checks.append(
            Check(
                "routed round trip",
                False,
                f"no echo through the relay: {exc}",
                "the relay accepts connections but does not route; check its log and /health",
            )
        )
    skew = time.time() - auth.relay_time
    checks.append(
        Check(
            "clock",
            abs(skew) <= MAX_SKEW,
            f"{skew:+.1f} s against the relay",
            ""
            if abs(skew) <= MAX_SKEW
            else "sync this machine's clock (NTP); checkpoint expiry and audit times depend on it",
        )
    )
    await link.close()
    return checks


def _roles(home: Path) -> tuple[bool, bool, bool]:
    return home.exists(), (home / "controller.key").exists(), (home / "machine.key").exists()


async def run_checks(home: Path) -> list[Check]:
    from daemon.process import read_status
    from daemon.store import DaemonStore

    from .cache import Cache
    from .store import ControllerStore

    checks = _permissions(home)
    exists, is_controller, is_machine = _roles(home)
    if not exists:
        return checks
    if is_controller:
        async with ControllerStore(home) as store:
            try:
                config = await store.config()
                keys = store.keys()  # refuses a key file others can read
            except StarmuxError as exc:
                checks.append(Check("controller", False, exc.message, exc.hint or ""))
            else:
                checks += await _relay_checks(
                    config.relay_url, keys, Role.CONTROLLER, config.name, config.relay_key
                )
                waiting = await Cache(store.db).pending()
                checks.append(
                    Check(
                        "outbox",
                        True,
                        f"{len(waiting)} command(s) waiting for their machine"
                        if waiting
                        else "empty",
                    )
                )
    if is_machine:
        status = read_status(home)
        running = status is not None and status.alive
        checks.append(
            Check(
                "daemon",
                running,
                f"running (pid {status.pid}, {status.state})"
                if running and status
                else "not running",
                ""
                if running
                else "start it: starmux daemon start (or --detach, "
                "or `starmux daemon install` for systemd)",
            )
        )
        daemon_store = DaemonStore(home)
        await daemon_store.open()
        try:
            url = await daemon_store.setting("relay_url")
            pinned = await daemon_store.relay_key()
            name = await daemon_store.setting("name") or "machine"
        finally:
            await daemon_store.close()
        # Connecting with the machine's key while its daemon runs would replace the
        # daemon's own connection (close 4013); a running daemon is checked by its status.
        if url and not running:
            try:
                machine_keys, _ = daemon_store.keys()
            except StarmuxError as exc:
                checks.append(Check("machine keys", False, exc.message, exc.hint or ""))
                return checks
            checks += [
                Check(f"machine: {c.name}", c.ok, c.detail, c.hint)
                for c in await _relay_checks(url, machine_keys, Role.MACHINE, name, pinned)
            ]
    if not (is_controller or is_machine):
        checks.append(
            Check(
                "identity",
                False,
                f"no controller or machine keys in {home}",
                "run `starmux init --relay URL` or `starmux daemon start --relay "
                "URL`, or point STARMUX_HOME at the right folder",
            )
        )
    return checks
