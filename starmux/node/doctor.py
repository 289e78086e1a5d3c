"""``starmux doctor``: check what actually matters, and say what to do about failures.

Shared by both roles: the checks themselves (home permissions, the relay through
the real protocol) and the command, which asks each role present in the home for
its own checks (``starmux.client.doctor``, ``starmux.daemon.doctor``), imported
lazily the way the CLI mounts roles, so neither role imports the other.

For a controller home and/or a machine home (one folder may hold both):
key and database permissions; the relay reached *with the real protocol*
(WebSocket upgrade, the pinned relay key, signature auth, and a frame routed back
to us through the relay's routing); clock skew against the relay; whether this
home's daemon runs; how many outbox commands wait.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import nacl.utils
import websockets

from starmux.errors import ConnectionLost, CryptoError, StarmuxError
from starmux.home import default_home
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


def permission_checks(home: Path) -> list[Check]:
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


async def relay_checks(
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


_ROLE_CHECKS = (
    ("controller.key", "starmux.client.doctor"),
    ("machine.key", "starmux.daemon.doctor"),
)


def _roles_present(home: Path) -> list[str] | None:
    """The role check modules whose keys are in ``home``; None when it does not exist."""
    if not home.exists():
        return None
    return [module for key, module in _ROLE_CHECKS if (home / key).exists()]


async def run_checks(home: Path) -> list[Check]:
    checks = permission_checks(home)
    present = _roles_present(home)
    if present is None:
        return checks
    for module in present:
        role_checks = importlib.import_module(module).role_checks
        checks += await role_checks(home)
    if not present:
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


@click.command("doctor")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    envvar="STARMUX_HOME",
    help="Controller or machine home [STARMUX_HOME or the user data dir].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_command(home: Path | None, as_json: bool) -> None:
    """Check keys, permissions, the relay (real protocol), clock, daemon and outbox."""
    checks = asyncio.run(run_checks(home or default_home()))
    if as_json:
        click.echo(json.dumps([c.to_json() for c in checks], indent=2))
    else:
        for check in checks:
            mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark} {check.name}: {check.detail}")
            if check.hint and not check.ok:
                click.echo(f"     hint: {check.hint}")
    raise SystemExit(0 if all(c.ok for c in checks) else 1)
