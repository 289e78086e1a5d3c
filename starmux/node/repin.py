"""``starmux relay repin``: deliberately trust a relay whose key really changed.

Every node pins the relay's key at first contact and refuses a relay that answers
with another one (someone may impersonate it). When the relay was reinstalled on
purpose, the person re-pins each controller and machine home with this command.

Invariants:
- The new key is never taken on the relay's word: the person types (or pastes from
  a pairing code) the fingerprint the relay operator published, and the relay that
  answers at the home's URL must have exactly that fingerprint.
- Old and new fingerprints are shown, and nothing is written without a confirmation
  (or ``--yes``).
- Works on a controller home (``controller.sqlite3``) and a machine home
  (``daemon.sqlite3``); a running daemon picks the new pin up at its next retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from pathlib import Path

import click

from starmux.errors import UsageError
from starmux.fingerprint import fingerprint, fingerprints_match, normalize_fingerprint
from starmux.home import default_home

#: the node databases that hold a relay pin (settings ``relay_url`` and ``relay_key``)
PINNED_DATABASES = ("controller.sqlite3", "daemon.sqlite3")


def _database(home: Path) -> Path:
    for name in PINNED_DATABASES:
        if (home / name).exists():
            return home / name
    raise UsageError(
        f"{home} is neither a controller nor a machine home",
        hint="pass --home (or STARMUX_HOME) of the node whose relay changed",
    )


def _settings(database: Path) -> tuple[str, bytes | None]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = dict(
            db.execute("SELECT name, value FROM settings WHERE name IN ('relay_url', 'relay_key')")
        )
    url = rows.get("relay_url")
    if url is None:
        raise UsageError(f"no relay is configured in {database.parent}")
    key = rows.get("relay_key")
    return bytes(url).decode(), bytes(key) if key is not None else None


def _write_pin(database: Path, key: bytes) -> None:
    # sqlite3's own context manager commits but does not close: both are needed.
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db, db:
        db.execute(
            "INSERT INTO settings (name, value) VALUES ('relay_key', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (key,),
        )


async def relay_key_at(url: str) -> bytes:
    """The key of the relay answering at ``url`` (a throwaway identity logs in)."""
    from starmux.identity import NodeKeys, Role

    from .link import RelayLink

    keys = NodeKeys.generate()
    link = RelayLink(url, keys, keys.card(Role.MACHINE, "repin"), pinned_relay_key=None)
    await link.connect()
    try:
        return link.relay_key
    finally:
        await link.close()


def _expected_fingerprint(typed: str | None, code: str | None) -> str:
    if code is not None:
        from starmux.pairing_code import parse_pairing_code

        return normalize_fingerprint(parse_pairing_code(code).relay_fingerprint)
    if typed == "-":
        typed = sys.stdin.readline().strip()
    if not typed:
        raise UsageError(
            "give the relay's new fingerprint",
            hint="the relay prints it at start (`relay fingerprint: ...`); or pass "
            "--code with a pairing code made through the new relay",
        )
    return normalize_fingerprint(typed)


@click.command("repin")
@click.argument("new_fingerprint", required=False)
@click.option("--code", default=None, help="Take the fingerprint from a pairing code instead.")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    envvar="STARMUX_HOME",
    help="The controller's or machine's home [STARMUX_HOME or the user data dir].",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def repin_command(
    new_fingerprint: str | None, code: str | None, home: Path | None, yes: bool
) -> None:
    """Trust the relay's new key (after it was reinstalled on purpose).

    NEW_FINGERPRINT is the one the relay printed at start ('-' reads it from stdin).
    Run it in every controller and machine home that uses this relay.
    """
    expected = _expected_fingerprint(new_fingerprint, code)
    database = _database(home or default_home())
    url, old_key = _settings(database)
    live_key = asyncio.run(relay_key_at(url))
    live = fingerprint(live_key)
    if not fingerprints_match(live, expected):
        raise UsageError(
            f"the relay at {url} answers with fingerprint {live}, not {expected}; "
            "nothing was changed",
            hint="check the fingerprint with the relay's operator; someone may "
            "impersonate the relay",
        )
    old = fingerprint(old_key) if old_key else "(none)"
    click.echo(f"relay: {url}")
    click.echo(f"old fingerprint: {old}")
    click.echo(f"new fingerprint: {live}")
    if old_key is not None and old_key == live_key:
        click.echo("this relay is already pinned; nothing to do")
        return
    if not yes:
        click.confirm("Trust the new relay key from now on?", abort=True)
    _write_pin(database, live_key)
    click.echo("re-pinned; a running daemon uses the new pin at its next retry")
