"""``starmux notify ...``: where this device is told about checkpoints and session ends.

Thin clients of the controller agent (:mod:`starmux.client.notify_actions`). Every
field that came from a machine (status details, machine names) goes through
:func:`printable`. The URL check runs here too, so a mistyped URL is refused before
anything is queued for a machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from starmux.errors import UsageError
from starmux.notify_delivery import check_webhook_url
from starmux.notify_rules import ALL_KINDS, DEFAULT_REMINDER_FRACTION

from . import agent_client
from .agent_cli import home_option, json_option, printable, progress, when
from .agent_cli import resolve_home as _home
from .session_commands import say_refused


@click.group("notify")
def notify_group() -> None:
    """Notifications: webhooks (ntfy-compatible) sent by your machines' daemons."""


def _machines_report(reply: dict[str, Any], done: str, as_json: bool) -> None:
    say_refused(reply)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    click.echo(done)
    failed = False
    for row in reply.get("machines") or []:
        machine = printable(row.get("machine", "?"))
        if row.get("queued"):
            click.echo(f"  {machine}: queued (offline); delivered when it is back")
        elif row.get("accepted"):
            click.echo(f"  {machine}: {printable(row.get('result') or 'ok')}")
        else:
            failed = True
            click.echo(f"  {machine}: refused: {printable(row.get('error') or '')}")
            if row.get("hint"):
                click.echo(f"    hint: {printable(row['hint'])}")
    if failed:
        raise SystemExit(1)


@notify_group.command("webhook")
@click.argument("url")
@click.option(
    "--content",
    type=click.Choice(["none", "full"]),
    default="none",
    show_default=True,
    help="none: only 'starmux: a checkpoint is waiting' / 'a session finished'; "
    "full: machine, session and checkpoint title, command and cwd.",
)
@click.option("--machine", "-m", default=None, help="Only this machine [all].")
@home_option
@json_option
def webhook_command(
    url: str, content: str, machine: str | None, home: Path | None, as_json: bool
) -> None:
    """POST notifications to URL (ntfy-compatible: the text is the body)."""
    try:
        check_webhook_url(url)
    except UsageError as exc:
        raise click.BadParameter(f"{exc.message} ({exc.hint})", param_hint="URL") from None
    with progress("registering it with your machines"):
        reply = agent_client.call(
            _home(home), "notify-target", kind="webhook", url=url, content=content, machine=machine
        )
    _machines_report(reply, f"webhook {printable(reply.get('target', '?'))} added", as_json)


@notify_group.command("list")
@home_option
@json_option
def list_command(home: Path | None, as_json: bool) -> None:
    """This device's targets and how each fares on each machine."""
    reply = agent_client.call(_home(home), "notify-list")
    say_refused(reply)
    rows = [t for t in reply.get("targets") or [] if isinstance(t, dict)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no notification targets: starmux notify webhook URL")
    for t in rows:
        where = printable(t.get("url") or "web push")
        click.echo(
            f"{printable(t.get('id', '?'))}  {printable(t.get('kind', '?'))}  "
            f"content={printable(t.get('content', '?'))}  {where}"
        )
        for m in t.get("machines") or []:
            line = f"    {printable(m.get('machine', '?'))}: {printable(m.get('state', '?'))}"
            if m.get("state") != "pending":
                line += f" ({m.get('delivered', 0)} delivered, {m.get('failed', 0)} failed"
                line += f", {when(m.get('at'))})"
            if m.get("state") == "failing" and m.get("detail"):
                line += f": {printable(m['detail'])}"
            click.echo(line)


@notify_group.command("remove")
@click.argument("target_id", metavar="ID")
@home_option
@json_option
def remove_command(target_id: str, home: Path | None, as_json: bool) -> None:
    """Stop notifying target ID (see `starmux notify list`)."""
    reply = agent_client.call(_home(home), "notify-remove", target=target_id)
    _machines_report(reply, f"removed {printable(target_id)}", as_json)


@notify_group.command("test")
@click.argument("target_id", metavar="[ID]", required=False, default="")
@home_option
@json_option
def test_command(target_id: str, home: Path | None, as_json: bool) -> None:
    """Have every machine send a test notification (to ID, or to every target)."""
    with progress("asking your machines"):
        reply = agent_client.call(_home(home), "notify-test", target=target_id)
    _machines_report(reply, "test notification requested (see `starmux notify list`)", as_json)


@notify_group.command("settings")
@click.option(
    "--kinds",
    default=",".join(sorted(ALL_KINDS)),
    show_default=True,
    help="Comma-separated kinds to be told about.",
)
@click.option(
    "--reminder",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=DEFAULT_REMINDER_FRACTION,
    show_default=True,
    help="Remind of a waiting checkpoint when this fraction of its timeout passed.",
)
@click.option("--machine", "-m", default=None, help="Only this machine [all].")
@home_option
@json_option
def settings_command(
    kinds: str, reminder: float, machine: str | None, home: Path | None, as_json: bool
) -> None:
    """What this device is told about, per machine (stored on each machine)."""
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in ALL_KINDS]
    if unknown:
        raise click.BadParameter(
            f"unknown kind {unknown[0]!r}; kinds are {', '.join(sorted(ALL_KINDS))}",
            param_hint="--kinds",
        )
    reply = agent_client.call(
        _home(home), "notify-settings", kinds=wanted, reminder=reminder, machine=machine
    )
    _machines_report(reply, f"settings: {', '.join(wanted)}; reminder at {reminder:g}", as_json)
