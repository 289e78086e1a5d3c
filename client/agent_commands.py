"""Controller commands around the controller agent: ``starmux controller start | stop |
status | install``, and the commands that go through it besides sessions:
``machines``, ``revoke``, ``outbox``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from . import agent_client
from .agent_cli import home_option, json_option, printable, progress, when
from .agent_cli import resolve_home as _home
from .agent_client import LOG_FILE
from .agent_process import (
    UNIT_NAME,
    foreground_argv,
    read_status,
    start_in_background,
    stop_agent,
)
from .session_commands import refuse_changed_relay, say_refused
from .task_commands import tag_command


@click.group("controller")
def controller_group() -> None:
    """The controller agent: one process per controller home that holds the relay
    connection and the cache; every command talks to it (and starts it if needed)."""


@controller_group.command("start")
@click.option("--detach", is_flag=True, help="Run in the background (log: controller.log).")
@click.option("--foreground", is_flag=True, hidden=True)
@home_option
def start_command(detach: bool, foreground: bool, home: Path | None) -> None:
    """Start this home's controller agent (in the foreground unless --detach)."""
    home = _home(home)
    from .store import KEY_FILE, NotInitialized

    if not (home / KEY_FILE).exists():
        raise NotInitialized(home)
    if detach:
        pid = start_in_background(home)
        click.echo(f"controller agent started (pid {pid}); log: {home / LOG_FILE}")
        return
    from .agent import run_agent

    raise SystemExit(run_agent(home))


@controller_group.command("stop")
@home_option
def stop_command(home: Path | None) -> None:
    """Stop this home's controller agent (SIGTERM, then SIGKILL after 10 s)."""
    stopped = stop_agent(_home(home))
    click.echo("controller agent stopped" if stopped else "controller agent was not running")


@controller_group.command("status")
@home_option
@json_option
def status_command(home: Path | None, as_json: bool) -> None:
    """Is this home's controller agent running; is it connected; how fresh is each machine?"""
    home = _home(home)
    status = read_status(home)
    live: dict[str, Any] | None = None
    if status is not None and status.alive:
        try:
            sock = agent_client.connect(home, start=False)
            sock.close()
            live = agent_client.call(home, "status")
        except agent_client.AgentUnavailable:
            live = None
    if as_json:
        record = status.to_json() if status else {"alive": False}
        click.echo(json.dumps({**record, "agent": live}))
        return
    if status is None or not status.alive:
        click.echo(
            "controller agent: not running (any command starts it; or `starmux controller start`)"
        )
        raise SystemExit(3)
    click.echo(f"controller agent: running (pid {status.pid}), up {int(status.uptime or 0)}s")
    if live is None:
        click.echo("not answering on its socket yet")
        return
    relay = live.get("relay") or {}
    state = (
        "connected"
        if relay.get("connected")
        else f"not connected ({printable(relay.get('error', ''))})"
    )
    click.echo(f"relay: {printable(live.get('relay_url', ''))} — {state}")
    for machine in live.get("machines") or []:
        name = printable(machine.get("name", "?"))
        if machine.get("live"):
            click.echo(f"  {name}: live")
        else:
            seen = machine.get("last_live") or machine.get("last_seen")
            click.echo(f"  {name}: offline, as of {when(seen) if seen else 'its last sync'}")


@controller_group.command("install")
@home_option
@click.option("--force", is_flag=True, help="Replace a different existing unit.")
def install_command(home: Path | None, force: bool) -> None:
    """Write a systemd user unit that keeps the controller agent running."""
    from starmux.node.systemd import enable_instructions, install_user_unit

    home = _home(home)
    path = install_user_unit(
        exec_start=foreground_argv(home),
        home=home,
        name=UNIT_NAME,
        description="starmux controller agent",
        force=force,
    )
    click.echo(f"wrote {path}")
    click.echo(enable_instructions(path))


@click.group("machines", invoke_without_command=True)
@home_option
@json_option
@click.pass_context
def machines_command(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """List paired machines, online or offline, with their fingerprints."""
    if ctx.invoked_subcommand is not None:
        return
    with progress("asking the controller agent"):
        reply = agent_client.call(_home(home), "machines")
    say_refused(reply)
    views = [v for v in reply.get("machines") or [] if isinstance(v, dict)]
    refuse_changed_relay(reply)
    for warning in reply.get("warnings") or []:
        click.echo(f"warning: {printable(warning)}", err=True)
    if as_json:
        click.echo(json.dumps(views, indent=2))
        return
    relay = reply.get("relay") or {}
    if not relay.get("connected"):
        click.echo(
            f"warning: relay unreachable ({printable(relay.get('error', ''))}); "
            "online states are unknown",
            err=True,
        )
    if not views:
        click.echo(
            "no paired machines yet: run `starmux daemon start` on a machine and "
            "`starmux pair CODE` here"
        )
    width = max((len(printable(v.get("name", ""))) for v in views), default=0)
    for view in views:
        state = click.style("online ", fg="green") if view.get("online") else "offline"
        seen = "" if view.get("online") else f"  last seen {when(view.get('last_seen'))}"
        listed = "  (not listed by the relay)" if view.get("listed_by_relay") is False else ""
        fleet = ""
        if view.get("capacity") is not None:  # as the machine last reported
            tags = ",".join(str(t) for t in view.get("tags") or []) or "-"
            fleet = (
                f"  tags {printable(tags)}  load {view.get('running')}+{view.get('queued')}"
                f"/{view.get('capacity')}"
            )
        click.echo(
            f"{printable(view.get('name', '?')):<{width}}  {state}  "
            f"{printable(view.get('fingerprint', '?'))}{seen}{listed}{fleet}"
        )
    names = [printable(v.get("name", "")) for v in views]
    for name in sorted({n for n in names if names.count(n) > 1}):
        click.echo(
            f"warning: several machines are called {name}: "
            f"starmux machines rename FINGERPRINT NEW-NAME",
            err=True,
        )


@click.command("revoke")
@click.argument("machine")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@home_option
@json_option
def revoke_command(machine: str, yes: bool, home: Path | None, as_json: bool) -> None:
    """Revoke MACHINE (name or fingerprint): the relay cuts it off for good."""
    if not yes and not click.confirm(
        f"Revoke {printable(machine)!r}? It will need to pair again", default=False
    ):
        raise click.Abort
    with progress("revoking through the relay"):
        reply = agent_client.call(_home(home), "revoke", machine=machine)
    if as_json:
        click.echo(
            json.dumps({"revoked": reply.get("revoked"), "fingerprint": reply.get("fingerprint")})
        )
        return
    name, fingerprint = printable(reply.get("revoked", "?")), printable(reply.get("fingerprint"))
    click.echo(f"revoked {name} ({fingerprint}); its unfinished sessions are marked `revoked`")


@click.command("outbox")
@home_option
@json_option
def outbox_command(home: Path | None, as_json: bool) -> None:
    """Commands waiting for their machine, and queued commands a machine refused."""
    reply = agent_client.call(_home(home), "outbox")
    rows = [r for r in reply.get("commands") or [] if isinstance(r, dict)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("outbox empty: nothing waits, nothing was refused")
    for r in rows:
        head = (
            f"{printable(r.get('command_id', '?'))}  {printable(r.get('machine', '?'))}  "
            f"{printable(r.get('kind', '?'))}  queued {when(r.get('created_at'))}  "
        )
        if r.get("state") == "refused":
            click.echo(head + f"REFUSED: {printable(r.get('error', ''))}")
            if r.get("hint"):
                click.echo(f"    hint: {printable(r['hint'])}")
        else:
            click.echo(head + "waiting for the machine")


@machines_command.command("rename")
@click.argument("machine")
@click.argument("name")
@home_option
def rename_command(machine: str, name: str, home: Path | None) -> None:
    """Call MACHINE (name or fingerprint) NAME on this controller."""
    reply = agent_client.call(_home(home), "rename", machine=machine, name=name)
    click.echo(
        f"renamed {printable(reply.get('renamed', '?'))} "
        f"({printable(reply.get('fingerprint', '?'))}) to {printable(reply.get('name', '?'))}"
    )


machines_command.add_command(tag_command)
