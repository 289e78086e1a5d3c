"""Device commands: ``starmux devices [link|add|remove|role]`` and ``starmux link``."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
import qrcode

from starmux.device_roles import DeviceRole, parse_role
from starmux.identity import IdentityCard
from starmux.link_code import Direction, LinkCode, parse_link_code

from . import device_actions, device_linking
from .agent_client import relay_link_released
from .commands import (
    _home,
    _printable,
    _warn_if_in_argv,
    _when,
    home_option,
    image_option,
    json_option,
    progress,
)

ROLE_CHOICE = click.Choice([r.value for r in DeviceRole])


def _terminal_qr(text: str) -> str:
    """The code as a terminal QR (light modules inked, for dark terminals)."""
    code = qrcode.QRCode(border=2)
    code.add_data(text)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue().replace("\xa0", " ")  # qrcode pads with no-break spaces


def _confirm(yes: bool, what: str) -> Callable[[IdentityCard, str], bool]:
    def confirm(other: IdentityCard, comparison: str) -> bool:
        click.echo(f"{what}: {_printable(other.name)}  ({other.fingerprint})", err=True)
        click.echo(f"comparison code: {comparison}  (the other device shows the same)", err=True)
        return yes or click.confirm("Do the codes match?", default=False, err=True)

    return confirm


@click.group("devices", invoke_without_command=True)
@home_option
@json_option
@click.pass_context
def devices_group(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """This account's controller devices: list, link, remove, change roles."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home
    if ctx.invoked_subcommand is not None:
        return
    # Every device command here opens its own relay connection with this device's key:
    # the controller agent's would close it (and it the agent's), so the agent stays
    # off meanwhile and, reconnecting, reads the device log these commands changed.
    with relay_link_released(_home(home)):
        rows = asyncio.run(device_actions.devices(_home(home)))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "role": r.role,
                        "fingerprint": r.fingerprint,
                        "added_by": r.added_by,
                        "added_at": r.added_at,
                        "online": r.online,
                        "last_seen": r.last_seen,
                        "this_device": r.this_device,
                    }
                    for r in rows
                ]
            )
        )
        return
    for r in rows:
        mark = "*" if r.this_device else " "
        click.echo(
            f"{mark} {_printable(r.name):<20} {r.role:<9} {r.fingerprint}  {_presence(r)}  "
            f"added by {_printable(r.added_by)} at {_when(r.added_at)}"
        )


def _presence(row: device_actions.DeviceView) -> str:
    if row.online:
        return "online"
    if row.last_seen is None:
        return "offline (never seen)"
    return f"offline (last seen {_when(row.last_seen)})"


@devices_group.command("link")
@click.option("--role", type=ROLE_CHOICE, default="viewer", help="The new device's role.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask to confirm the comparison code.")
@home_option
def link_device_command(role: str, yes: bool, home: Path | None) -> None:
    """Show a link code (QR and text) for a new device and add it to this account."""

    with relay_link_released(_home(home)), progress("waiting for the new device"):
        device = asyncio.run(
            device_linking.invite(
                _home(home),
                parse_role(role),
                show_code=_show("starmux link CODE", "new device"),
                confirm=_confirm(yes, "new device"),
            )
        )
    click.echo(f"linked {_printable(device.name)} ({device.fingerprint}) as {role}")


@devices_group.command("add")
@click.argument("code", required=False)
@image_option("the new device's join QR code")
@click.option("--role", type=ROLE_CHOICE, default="viewer", help="The new device's role.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask to confirm the comparison code.")
@home_option
def add_device_command(
    code: str | None, image: Path | None, role: str, yes: bool, home: Path | None
) -> None:
    """Add the new device that shows a join code (`starmux link --show` on it)."""
    parsed = _code_argument(code, image, Direction.JOIN)
    with relay_link_released(_home(home)), progress("adding the device through the relay"):
        device = asyncio.run(
            device_linking.add(
                _home(home),
                parsed,
                parse_role(role),
                confirm=_confirm(yes, "new device"),
            )
        )
    click.echo(f"added {_printable(device.name)} ({device.fingerprint}) as {role}")


def _show(read_by: str, other: str) -> device_linking.Show:
    def show(code: LinkCode, expires_at: float) -> None:
        text = code.to_text()
        click.echo(_terminal_qr(text))
        click.echo(text)
        click.echo(f"on the {other}: {read_by} (expires {_when(expires_at)})", err=True)
        sys.stdout.flush()

    return show


def _code_argument(code: str | None, image: Path | None, direction: Direction) -> LinkCode:
    if (code is None) == (image is None):
        raise click.UsageError("give the CODE or --image FILE (one of them)")
    if image is not None:
        from .qr_image import decode_pairing_code_from_image

        prefix = "starmux://link/" if direction is Direction.INVITE else "starmux://join/"
        code = decode_pairing_code_from_image(image, prefix=prefix)
    assert code is not None
    if code == "-":
        code = sys.stdin.read()
    elif image is None:
        # Like a pairing code, the code holds a secret (until it is used or expires).
        _warn_if_in_argv(click.get_current_context(), "code", "the code", "'-' (stdin) or --image")
    return parse_link_code(code, direction)


@devices_group.command("remove")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@home_option
def remove_device_command(name: str, yes: bool, home: Path | None) -> None:
    """Remove a device from this account at once (the relay cuts it off)."""
    if not yes:
        click.confirm(f"Remove the device {_printable(name)} for good?", abort=True, err=True)
    with relay_link_released(_home(home)):
        device = asyncio.run(device_actions.remove(_home(home), name))
    click.echo(f"removed {_printable(device.name)} ({device.fingerprint})")


@devices_group.command("role")
@click.argument("name")
@click.argument("role", type=ROLE_CHOICE)
@home_option
def role_device_command(name: str, role: str, home: Path | None) -> None:
    """Change a device's role (owner, operator, viewer)."""
    with relay_link_released(_home(home)):
        device = asyncio.run(device_actions.set_role(_home(home), name, parse_role(role)))
    click.echo(f"{_printable(device.name)} is now {role}")


@click.command("link")
@click.argument("code", required=False)
@image_option("the owner device's link QR code")
@click.option(
    "--show",
    "show_code",
    is_flag=True,
    help="Show this device's own join code instead (for an owner's `devices add`).",
)
@click.option(
    "--relay",
    "relay_url",
    default=None,
    envvar="STARMUX_RELAY_URL",
    help="With --show: the account's relay, e.g. wss://HOST.",
)
@click.option(
    "--relay-fingerprint",
    default=None,
    help="With --show: the relay's fingerprint, checked instead of trusted on first use "
    "(the owner checks it against its own pin either way).",
)
@click.option("--name", default=None, help="This device's name [the hostname].")
@click.option("--yes", "-y", is_flag=True, help="Do not ask to confirm the comparison code.")
@home_option
@json_option
def link_command(
    code: str | None,
    image: Path | None,
    show_code: bool,
    relay_url: str | None,
    relay_fingerprint: str | None,
    name: str | None,
    yes: bool,
    home: Path | None,
    as_json: bool,
) -> None:
    """Join an account: from the link CODE an owner device shows (or --image of its
    QR), or --show this device's join code for an owner to add."""
    import socket

    name = name or socket.gethostname()[:64] or "device"
    if show_code:
        if code is not None or image is not None:
            raise click.UsageError("--show shows a code: give no CODE or --image with it")
        if relay_url is None:
            raise click.UsageError("--show needs the account's relay: --relay URL")
        with relay_link_released(_home(home)):
            joined = asyncio.run(
                device_linking.join_shown(
                    _home(home),
                    relay_url,
                    relay_fingerprint=relay_fingerprint,
                    name=name,
                    show_code=_show("starmux devices add CODE", "owner device"),
                    confirm=_confirm(yes, "owner device"),
                    status=_status,
                )
            )
    else:
        parsed = _code_argument(code, image, Direction.INVITE)
        with relay_link_released(_home(home)), progress("linking through the relay"):
            joined = asyncio.run(
                device_linking.join(
                    _home(home), parsed, name=name, confirm=_confirm(yes, "inviting device")
                )
            )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "owner": joined.owner.name,
                    "role": joined.role.value,
                    "devices": len(joined.log.devices),
                    "machines": joined.machines,
                }
            )
        )
        return
    click.echo(
        f"linked to the account of {_printable(joined.owner.name)} as {joined.role.value}; "
        f"{joined.machines} machine(s)"
    )


def _status(text: str) -> None:
    """What `link --show` waits for, as it goes (stderr: stdout has the code)."""
    click.echo(f"{text}…", err=True)
