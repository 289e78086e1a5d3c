"""Controller commands: ``init``, ``pair``, ``machines``, ``revoke``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from starmux.home import default_home
from starmux.identity import IdentityCard
from starmux.pairing_code import parse_pairing_code

from . import actions
from .timefmt import local_time

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    envvar="STARMUX_HOME",
    help="Controller home [STARMUX_HOME or the user data dir].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@contextlib.contextmanager
def progress(text: str) -> Iterator[None]:
    """Say what we wait for, on a terminal only (stderr), and clear it afterwards."""
    shown = sys.stderr.isatty()
    if shown:
        sys.stderr.write(f"{text}…")
        sys.stderr.flush()
    try:
        yield
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _home(home: Path | None) -> Path:
    return home or default_home()


def _printable(text: str) -> str:
    """Remote text (machine names) is escaped before it reaches the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _when(timestamp: float | None) -> str:
    return local_time(timestamp)


@click.command("init")
@click.option("--relay", "relay_url", required=True, help="Relay URL, e.g. ws://HOST:8765.")
@click.option(
    "--token", default="", envvar="STARMUX_TOKEN", help="The relay's one-time registration token."
)
@click.option("--name", default=None, help="This controller's name [the hostname].")
@home_option
@json_option
def init_command(
    relay_url: str, token: str, name: str | None, home: Path | None, as_json: bool
) -> None:
    """Create this controller's keys, register an account with the relay, pin its key."""
    import socket

    result = asyncio.run(
        actions.init(
            _home(home),
            relay_url=relay_url,
            token=token,
            name=name or socket.gethostname()[:64] or "controller",
        )
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "fingerprint": result.fingerprint,
                    "account": result.account.hex(),
                    "relay_fingerprint": result.relay_fingerprint,
                    "already_initialized": result.already,
                }
            )
        )
        return
    click.echo(f"controller fingerprint: {result.fingerprint}")
    click.echo(f"relay fingerprint (pinned): {result.relay_fingerprint}")
    click.echo("already initialized" if result.already else "account registered")
    click.echo(
        "next: run `starmux daemon start --relay URL` on a machine, then `starmux pair CODE` here"
    )


@click.command("pair")
@click.argument("code", required=False)
@click.option(
    "--image",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A photo or screenshot of the daemon's QR code.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask to confirm the comparison code.")
@home_option
@json_option
def pair_command(
    code: str | None, image: Path | None, yes: bool, home: Path | None, as_json: bool
) -> None:
    """Pair a machine from its pairing CODE (or --image of its QR code)."""
    if (code is None) == (image is None):
        raise click.UsageError("give the pairing CODE or --image FILE (one of them)")
    if image is not None:
        from .qr_image import decode_pairing_code_from_image

        code = decode_pairing_code_from_image(image)
    assert code is not None
    if code == "-":
        code = sys.stdin.read()
    parsed = parse_pairing_code(code)

    def confirm(machine: IdentityCard, comparison: str) -> bool:
        if not as_json:
            click.echo(f"machine: {_printable(machine.name)}  ({machine.fingerprint})")
            click.echo(f"comparison code: {comparison}  (the daemon shows the same code)")
        if yes:
            return True
        return click.confirm("Do the codes match? Pair this machine", default=False)

    with progress("pairing through the relay"):
        result = asyncio.run(actions.pair(_home(home), parsed, confirm=confirm))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "machine": result.machine.name,
                    "fingerprint": result.machine.fingerprint,
                    "comparison_code": result.comparison_code,
                    "confirmed_by_machine": result.stored_by_machine,
                }
            )
        )
        return
    click.echo(f"paired with {_printable(result.machine.name)} ({result.machine.fingerprint})")
    if not result.stored_by_machine:
        click.echo(
            "warning: the machine did not confirm it stored the grant; if it keeps "
            "showing a QR code, pair it again",
            err=True,
        )


@click.command("machines")
@home_option
@json_option
def machines_command(home: Path | None, as_json: bool) -> None:
    """List paired machines, online or offline, with their fingerprints."""
    with progress("asking the relay"):
        report = asyncio.run(actions.machines(_home(home)))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    views = report.machines
    if as_json:
        rows: list[dict[str, Any]] = [
            {
                "name": v.name,
                "fingerprint": v.fingerprint,
                "online": v.online,
                "listed_by_relay": v.listed,
                "paired_at": v.paired_at,
                "last_seen": v.last_seen,
                "key": v.key.hex(),
            }
            for v in views
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not views:
        click.echo(
            "no paired machines yet: run `starmux daemon start` on a machine and "
            "`starmux pair CODE` here"
        )
        return
    width = max(len(_printable(v.name)) for v in views)
    for view in views:
        if not view.listed:
            state, seen = "missing", "  not listed by the relay"
        elif view.online:
            state, seen = click.style("online ", fg="green"), ""
        else:
            state, seen = "offline", f"  last seen {_when(view.last_seen)}"
        click.echo(f"{_printable(view.name):<{width}}  {state}  {view.fingerprint}{seen}")


@click.command("revoke")
@click.argument("machine")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@home_option
@json_option
def revoke_command(machine: str, yes: bool, home: Path | None, as_json: bool) -> None:
    """Revoke MACHINE (name or fingerprint): the relay cuts it off for good."""
    if not yes and not click.confirm(
        f"Revoke {machine!r}? It will need to pair again", default=False
    ):
        raise click.Abort
    with progress("revoking through the relay"):
        revoked = asyncio.run(actions.revoke(_home(home), machine))
    if as_json:
        click.echo(json.dumps({"revoked": revoked.name, "fingerprint": revoked.fingerprint}))
        return
    click.echo(f"revoked {_printable(revoked.name)} ({revoked.fingerprint})")


@click.command("demo")
@click.option("--yes", "-y", is_flag=True, help="Approve the demo checkpoint automatically.")
@json_option
def demo_command(yes: bool, as_json: bool) -> None:
    """Run a relay, a daemon and a controller here: pair, run, approve, clean up."""
    from .demo import demo_command_impl

    raise SystemExit(demo_command_impl(yes=yes, as_json=as_json))
