"""Controller commands: ``init``, ``pair``, ``machines``, ``revoke``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from starmux.identity import IdentityCard
from starmux.node.answers import read_answer
from starmux.pairing_code import parse_pairing_code

from . import actions, agent_cli
from .timefmt import local_time

_Command = TypeVar("_Command", bound=Callable[..., Any])

home_option = agent_cli.home_option
json_option = agent_cli.json_option
progress = agent_cli.progress
_home = agent_cli.resolve_home
_printable = agent_cli.printable


ARGV_WARNING = (
    "warning: {what} on the command line is visible to other users (`ps`) and kept "
    "in your shell history; prefer {instead}"
)


def _warn_if_in_argv(ctx: click.Context, param: str, what: str, instead: str) -> None:
    if ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE:
        click.echo(ARGV_WARNING.format(what=what, instead=instead), err=True)


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc


def _when(timestamp: float | None) -> str:
    return local_time(timestamp)


@click.command("init")
@click.option("--relay", "relay_url", required=True, help="Relay URL, e.g. ws://HOST:8765.")
@click.option(
    "--token",
    default=None,
    envvar="STARMUX_TOKEN",
    help="The relay's one-time registration token (a secret): '-' reads it from stdin; "
    "better --token-file or STARMUX_TOKEN; asked for on a terminal if none is given.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read the registration token from this file.",
)
@click.option(
    "--relay-fingerprint",
    default=None,
    help="The relay's fingerprint (it prints it at start): checked instead of trusted "
    "on first use.",
)
@click.option("--name", default=None, help="This controller's name [the hostname].")
@home_option
@json_option
@click.pass_context
def init_command(
    ctx: click.Context,
    relay_url: str,
    token: str | None,
    token_file: Path | None,
    relay_fingerprint: str | None,
    name: str | None,
    home: Path | None,
    as_json: bool,
) -> None:
    """Create this controller's keys, register an account with the relay, pin its key."""
    import socket

    from starmux.fingerprint import normalize_fingerprint

    if token_file is not None:
        token = _read_secret_file(token_file)
    elif token == "-":
        token = sys.stdin.readline().strip()
    elif token is not None:
        _warn_if_in_argv(ctx, "token", "--token", "--token-file, --token - or STARMUX_TOKEN")
    elif sys.stdin.isatty():
        token = click.prompt(
            "registration token (empty for a relay with open registration)",
            default="",
            hide_input=True,
            show_default=False,
        )
    result = asyncio.run(
        actions.init(
            _home(home),
            relay_url=relay_url,
            token=token or "",
            name=name or socket.gethostname()[:64] or "controller",
            relay_fingerprint=normalize_fingerprint(relay_fingerprint)
            if relay_fingerprint
            else None,
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


def image_option(what: str) -> Callable[[_Command], _Command]:
    """``--image FILE``: a photo or screenshot of ``what`` (a QR code to decode)."""
    return click.option(
        "--image",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help=f"A photo or screenshot of {what}.",
    )


@click.command("pair")
@click.argument("code", required=False)
@image_option("the daemon's QR code")
@click.option(
    "--code-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read the pairing code from this file.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask to confirm the comparison code.")
@home_option
@json_option
@click.pass_context
def pair_command(
    ctx: click.Context,
    code: str | None,
    image: Path | None,
    code_file: Path | None,
    yes: bool,
    home: Path | None,
    as_json: bool,
) -> None:
    """Pair a machine from its pairing CODE (a secret: '-' or nothing reads it from
    stdin, asking on a terminal), --code-file or --image of its QR code."""
    if sum(x is not None for x in (code, image, code_file)) > 1:
        raise click.UsageError("give one of CODE, --code-file FILE or --image FILE")
    if image is not None:
        from .qr_image import decode_pairing_code_from_image

        code = decode_pairing_code_from_image(image)
    elif code_file is not None:
        code = _read_secret_file(code_file)
    elif code is None and sys.stdin.isatty():
        code = click.prompt("pairing code", hide_input=True)
    elif code is None or code == "-":
        code = sys.stdin.readline()
    else:
        _warn_if_in_argv(ctx, "code", "the pairing code", "`pair -`, --code-file or the prompt")
    assert code is not None
    parsed = parse_pairing_code(code)

    async def confirm(machine: IdentityCard, comparison: str) -> bool:
        if not as_json:
            click.echo(f"machine: {_printable(machine.name)}  ({machine.fingerprint})")
            click.echo(f"comparison code: {comparison}  (the daemon shows the same code)")
        if yes:
            return True
        # Read on the event loop, not with input(): Ctrl-C must end the command at
        # once and tell the machine (see actions.pair), not wait for Enter.
        click.echo("Do the codes match? Pair this machine [y/N]: ", nl=False)
        answer = await read_answer()
        return answer.strip().lower() in ("y", "yes")

    def comparison_known(comparison: str) -> None:
        if not as_json:
            click.echo(
                f"comparison code: {comparison}  (if the machine asks, confirm it there)",
                err=True,
            )

    from .agent_client import relay_link_released

    # Pairing runs its own relay connection with this device's key: the controller
    # agent's would close it (and it the agent's), so the agent stays off meanwhile.
    with relay_link_released(_home(home)), progress("pairing through the relay"):
        result = asyncio.run(
            actions.pair(_home(home), parsed, confirm=confirm, on_comparison_code=comparison_known)
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "machine": result.name or result.machine.name,
                    "fingerprint": result.machine.fingerprint,
                    "comparison_code": result.comparison_code,
                    "confirmed_by_machine": result.stored_by_machine,
                }
            )
        )
        return
    click.echo(
        f"paired with {_printable(result.name or result.machine.name)} "
        f"({result.machine.fingerprint})"
    )
    if not result.stored_by_machine:
        click.echo(
            "warning: the machine did not confirm it stored the grant; if it keeps "
            "showing a QR code, pair it again",
            err=True,
        )


@click.command("demo")
@click.option("--yes", "-y", is_flag=True, help="Approve the demo checkpoint automatically.")
@json_option
def demo_command(yes: bool, as_json: bool) -> None:
    """Run a relay, a daemon and a controller here: pair, run, approve, clean up."""
    from .demo import demo_command_impl

    raise SystemExit(demo_command_impl(yes=yes, as_json=as_json))
