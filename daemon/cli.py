"""``starmux daemon ...``: run and manage this machine's daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click

from starmux.errors import UsageError
from starmux.home import default_home
from starmux.node import event_loop

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    envvar="STARMUX_HOME",
    help="Daemon home folder [STARMUX_HOME or the user data dir].",
)


def _home(home: Path | None) -> Path:
    return home or default_home()


def foreground_argv(
    home: Path,
    *,
    relay_url: str | None,
    name: str | None,
    allow_roots: tuple[Path, ...],
    tags: tuple[str, ...] = (),
    capacity: int | None = None,
    allow_env: tuple[str, ...] = (),
    private_name: bool = False,
) -> list[str]:
    """The command that runs this daemon in the foreground (for --detach and systemd)."""
    argv = [
        sys.executable,
        "-m",
        "starmux.cli",
        "daemon",
        "start",
        "--foreground",
        "--home",
        str(home),
    ]
    if relay_url:
        argv += ["--relay", relay_url]
    if name:
        argv += ["--name", name]
    for root in allow_roots:
        argv += ["--allow-root", str(root.expanduser().resolve())]
    for tag in tags:
        argv += ["--tag", tag]
    if capacity is not None:
        argv += ["--capacity", str(capacity)]
    for env_name in allow_env:
        argv += ["--allow-env", env_name]
    if private_name:
        argv.append("--private-name")
    return argv


def _env_names(names: tuple[str, ...]) -> tuple[str, ...]:
    import re

    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
            raise click.BadParameter(f"{name!r} is not an environment variable name")
    return names


#: where the pairing code goes when the daemon's output is not a terminal
CODE_FILE = "pairing-code"


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


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
@home_option
@click.option("--detach", is_flag=True, help="Run in the background (log: HOME/daemon.log).")
@click.option("--foreground", is_flag=True, help="Run in this terminal (the default).")
@click.option(
    "--allow-root",
    "allow_roots",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Sessions may only run under these directories (repeatable) [your home].",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="A tag tasks can target, e.g. gpu or os=linux (repeatable; replaces the stored ones).",
)
@click.option("--capacity", type=int, default=None, help="Tasks run at once; remembered [1].")
@click.option(
    "--confirm",
    is_flag=True,
    help="Ask here too: accept a pairing only after you confirm the comparison code.",
)
@click.option(
    "--allow-env",
    "allow_env",
    multiple=True,
    callback=lambda ctx, param, value: _env_names(value),
    help="Only these environment variables (repeatable) may a controller set for a "
    "session; others are refused. Remembered across restarts [any].",
)
@click.option(
    "--private-name",
    is_flag=True,
    help="Keep the name (hostname) from the relay: its card says 'machine'; "
    "controllers learn the real name over the encrypted pairing. Remembered.",
)
@click.option(
    "--print-code",
    is_flag=True,
    help="Print the pairing code even when the output is not a terminal "
    "[by default it then goes to the 0600 file HOME/pairing-code].",
)
def start_command(
    relay_url: str | None,
    name: str | None,
    as_json: bool,
    home: Path | None,
    detach: bool,
    foreground: bool,
    allow_roots: tuple[Path, ...],
    tags: tuple[str, ...],
    capacity: int | None,
    confirm: bool,
    print_code: bool,
    allow_env: tuple[str, ...],
    private_name: bool,
) -> None:
    """Start the daemon (pairs on first run: shows a QR code)."""
    from .fleet_settings import check_flags
    from .process import DaemonLock
    from .process import detach as detach_process
    from .runtime import Daemon
    from .terminal import Terminal

    home = _home(home)
    check_flags(tags, capacity)
    if detach and not foreground and confirm:
        raise UsageError(
            "--confirm needs this terminal to ask you", hint="start without --detach to pair"
        )
    if detach and not foreground:
        argv = foreground_argv(
            home,
            relay_url=relay_url,
            name=name,
            allow_roots=allow_roots,
            tags=tags,
            capacity=capacity,
            allow_env=allow_env,
            private_name=private_name,
        )
        pid = detach_process(argv, home=home, log_file=home / "daemon.log")
        click.echo(f"daemon started in the background (pid {pid}); log: {home / 'daemon.log'}")
        click.echo(
            f"see `starmux daemon status`; until it is paired, its pairing code is in "
            f"{home / CODE_FILE} (0600), not in the log"
        )
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with DaemonLock(home, argv=sys.argv, relay_url=relay_url) as lock:

        def status_hook(*, state: str, **fields: object) -> None:
            roots = fields.get("allow_roots")
            lock.update_status(
                state=state,
                relay_url=_str(fields.get("relay_url")),
                fingerprint=_str(fields.get("machine_fingerprint")),
                details={"allow_roots": roots} if isinstance(roots, list) else None,
            )

        daemon = Daemon(
            home,
            relay_url=relay_url,
            name=name,
            terminal=Terminal(
                json_lines=as_json,
                # Not a terminal (systemd's journal, a log file): keep the secret out.
                code_file=None if print_code or sys.stdout.isatty() else home / CODE_FILE,
            ),
            status_hook=status_hook,
            allow_roots=allow_roots,
            tags=tags,
            capacity=capacity,
            confirm=confirm,
            allow_env=allow_env or None,
            private_name=private_name,
        )
        event_loop.run(_run_until_signal(daemon.run()))


async def _run_until_signal(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main``; SIGTERM/SIGINT cancel it so cleanup (closing SQLite) runs."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        click.echo("daemon stopped", err=True)


@daemon_group.command("status")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(home: Path | None, as_json: bool) -> None:
    """Is this home's daemon running, and in which state?"""
    from .process import read_status

    status = read_status(_home(home))
    if as_json:
        click.echo(json.dumps(status.to_json() if status else {"alive": False}))
        return
    if status is None or not status.alive:
        click.echo("daemon: not running (start it with `starmux daemon start`)")
        raise SystemExit(3)
    click.echo(f"daemon: running (pid {status.pid}), {status.state}, up {int(status.uptime or 0)}s")
    if status.fingerprint:
        click.echo(f"machine fingerprint: {status.fingerprint}")
    if status.relay_url:
        click.echo(f"relay: {status.relay_url}")
    roots = status.details.get("allow_roots")
    if isinstance(roots, list):
        click.echo("sessions may run under: " + ", ".join(str(root) for root in roots))


@daemon_group.command("stop")
@home_option
def stop_command(home: Path | None) -> None:
    """Stop this home's daemon (SIGTERM, then SIGKILL after 10 s)."""
    from .process import stop_daemon

    click.echo("daemon stopped" if stop_daemon(_home(home)) else "daemon was not running")


@daemon_group.command("install")
@home_option
@click.option("--relay", "relay_url", default=None, help="Relay URL to start with.")
@click.option("--force", is_flag=True, help="Replace a different existing unit.")
@click.option(
    "--allow-root",
    "allow_roots",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Sessions may only run under these directories (repeatable) [your home].",
)
def install_command(
    home: Path | None, relay_url: str | None, force: bool, allow_roots: tuple[Path, ...]
) -> None:
    """Write a systemd user unit that keeps the daemon running, and say how to enable it."""
    from .systemd import enable_instructions, install_user_unit

    home = _home(home)
    exec_start = foreground_argv(home, relay_url=relay_url, name=None, allow_roots=allow_roots)
    path = install_user_unit(exec_start=exec_start, home=home, force=force)
    click.echo(f"wrote {path}")
    click.echo(enable_instructions(path))
