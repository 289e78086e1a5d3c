"""``starmux daemon ...``: run and manage this machine's daemon."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from starmux.home import default_home


def _home(home: Path | None) -> Path:
    return home or default_home()


@click.group("daemon")
def daemon_group() -> None:
    """Run this machine's daemon: it dials out to the relay and runs agent sessions."""


@daemon_group.command("start")
@click.option(
    "--relay",
    "relay_url",
    default=None,
    envvar="STARMUX_RELAY_URL",
    help="Relay URL (ws://HOST:PORT or wss://...); remembered after the first start.",
)
@click.option("--name", default=None, help="Name shown to controllers [the hostname].")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    envvar="STARMUX_HOME",
    help="Daemon home folder [STARMUX_HOME or the user data dir].",
)
def start_command(
    relay_url: str | None, name: str | None, as_json: bool, home: Path | None
) -> None:
    """Start the daemon in the foreground (pairs on first run: shows a QR code)."""
    from .runtime import Daemon
    from .terminal import Terminal

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    daemon = Daemon(
        _home(home), relay_url=relay_url, name=name, terminal=Terminal(json_lines=as_json)
    )
    asyncio.run(_run_until_signal(daemon.run()))


async def _run_until_signal(main: object) -> None:
    """Run ``main``; SIGTERM/SIGINT cancel it so cleanup (closing SQLite) runs."""
    assert asyncio.iscoroutine(main)
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        click.echo("daemon stopped", err=True)
