"""Controller commands for sessions and approvals."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from . import sessions as actions
from .commands import _home, _printable, home_option, json_option, progress
from .timefmt import local_time


def _outcome_json(outcome: actions.CommandOutcome, **extra: Any) -> str:
    ack = outcome.ack
    return json.dumps(
        {
            "command_id": outcome.command_id,
            "machine": outcome.machine.name,
            "queued": outcome.queued,
            "ok": ack.ok if ack else None,
            "error": ack.error if ack else None,
            "result": ack.result if ack else None,
            **extra,
        }
    )


def _report(outcome: actions.CommandOutcome, done: str, as_json: bool, **extra: Any) -> None:
    if as_json:
        click.echo(_outcome_json(outcome, **extra))
    elif outcome.queued:
        click.echo(
            f"queued: {_printable(outcome.machine.name)} is offline or did not answer; "
            "the command waits in this controller's outbox and is delivered the next "
            "time a starmux command (e.g. `starmux sessions` or `watch`) runs while "
            "the machine is online"
        )
    elif outcome.ack is not None and outcome.ack.ok:
        click.echo(done)
    if outcome.ack is not None and not outcome.ack.ok:
        if not as_json:
            click.echo(f"error: {outcome.ack.error}", err=True)
            if outcome.ack.hint:
                click.echo(f"hint: {outcome.ack.hint}", err=True)
        raise SystemExit(1)


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--machine", "-m", required=True, help="Machine name or fingerprint.")
@click.option("--cwd", default="~", help="Working directory on the machine [its home].")
@click.option("--title", default="", help="A title for the session.")
@click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE for the process (repeatable).")
@click.option("--pty", is_flag=True, help="Give the process a terminal (interactive agents).")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@home_option
@json_option
def run_command(
    machine: str,
    cwd: str,
    title: str,
    env_pairs: tuple[str, ...],
    pty: bool,
    argv: tuple[str, ...],
    home: Path | None,
    as_json: bool,
) -> None:
    """Start COMMAND on a machine: starmux run --machine M -- COMMAND ARGS..."""
    with progress(f"starting it on {machine}"):
        session, outcome = asyncio.run(
            actions.run(
                _home(home), machine, list(argv), cwd=cwd, title=title, env=_env(env_pairs), pty=pty
            )
        )
    _report(
        outcome,
        f"started session {session} on {_printable(outcome.machine.name)}\n"
        f"follow it: starmux watch {session}",
        as_json,
        session=session,
    )


@click.command("cancel")
@click.argument("session")
@home_option
@json_option
def cancel_command(session: str, home: Path | None, as_json: bool) -> None:
    """Cancel SESSION (SIGTERM, then SIGKILL after a grace period)."""
    with progress("cancelling"):
        outcome = asyncio.run(actions.cancel(_home(home), session))
    _report(outcome, f"cancelled {session}", as_json, session=session)


def _age(timestamp: float) -> str:
    return local_time(timestamp)


@click.command("sessions")
@click.option("--machine", "-m", default=None, help="Only this machine.")
@home_option
@json_option
def sessions_command(machine: str | None, home: Path | None, as_json: bool) -> None:
    """List sessions on all machines (synced from the online ones)."""
    with progress("syncing with online machines"):
        rows, fresh, names = asyncio.run(actions.sessions(_home(home), machine))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "machine": names.get(r.machine, r.machine.hex()),
                        "title": r.title,
                        "cwd": r.cwd,
                        "argv": r.argv,
                        "status": r.status,
                        "exit_code": r.exit_code,
                        "created_at": r.created_at,
                        "updated_at": r.updated_at,
                        "cost": {
                            "input_tokens": r.input_tokens,
                            "output_tokens": r.output_tokens,
                            "usd": r.usd,
                        },
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not fresh:
        click.echo("warning: relay unreachable; showing cached data", err=True)
    if not rows:
        click.echo("no sessions yet: starmux run --machine M -- COMMAND")
    for r in rows:
        name = _printable(names.get(r.machine, "?"))
        code = f" ({r.exit_code})" if r.exit_code is not None else ""
        click.echo(
            f"{r.id}  {name:<12} {r.status + code:<18} {_age(r.created_at)}  {_printable(r.title)}"
        )


def _write_output(stream: str, data: bytes) -> None:
    target = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
    target.write(data)
    target.flush()


@click.command("logs")
@click.argument("session")
@home_option
def logs_command(session: str, home: Path | None) -> None:
    """Print SESSION's output so far (synced from its machine if online)."""
    with progress("syncing"):
        row, events = asyncio.run(actions.logs(_home(home), session))
    for event in events:
        chunk = actions.output_of(event)
        if chunk:
            _write_output(*chunk)
    click.echo(f"[{session}: {row.status}]", err=True)


@click.command("watch")
@click.argument("session")
@home_option
def watch_command(session: str, home: Path | None) -> None:
    """Print SESSION's output so far, then follow it live until it ends."""
    row = asyncio.run(
        actions.watch(
            _home(home),
            session,
            write=_write_output,
            status=lambda text: click.echo(f"[{session}: {text}]", err=True),
        )
    )
    raise SystemExit(0 if row.status == "succeeded" else 1)


@click.command("approvals")
@home_option
@json_option
def approvals_command(home: Path | None, as_json: bool) -> None:
    """Checkpoints waiting for a decision, on every machine."""
    with progress("syncing with online machines"):
        rows, fresh, names = asyncio.run(actions.approvals(_home(home)))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "machine": names.get(c.machine, c.machine.hex()),
                        "session": c.session,
                        "title": c.title,
                        "body": c.body,
                        "expires_at": c.expires_at,
                        "default": "approve" if c.default_approve else "deny",
                    }
                    for c in rows
                ],
                indent=2,
            )
        )
        return
    if not fresh:
        click.echo("warning: relay unreachable; showing cached data", err=True)
    if not rows:
        click.echo("nothing waits for approval")
    for c in rows:
        click.echo(
            f"{c.id}  {_printable(names.get(c.machine, '?'))}  {c.session}  "
            f"{_printable(c.title)}  (expires {_age(c.expires_at)}, default "
            f"{'approve' if c.default_approve else 'deny'})"
        )
        if c.body:
            click.echo("    " + _printable(c.body[:200]))


def _decide(checkpoint: str, approve: bool, reason: str, home: Path | None, as_json: bool) -> None:
    with progress("delivering the signed decision"):
        outcome = asyncio.run(
            actions.decide(_home(home), checkpoint, approve=approve, reason=reason)
        )
    verb = "approved" if approve else "denied"
    _report(outcome, f"{verb} {checkpoint}", as_json, checkpoint=checkpoint)


@click.command("approve")
@click.argument("checkpoint")
@click.option("--reason", default="", help="Recorded with the decision.")
@home_option
@json_option
def approve_command(checkpoint: str, reason: str, home: Path | None, as_json: bool) -> None:
    """Approve CHECKPOINT (signed with this controller's key)."""
    _decide(checkpoint, True, reason, home, as_json)


@click.command("deny")
@click.argument("checkpoint")
@click.option("--reason", default="", help="Recorded with the decision.")
@home_option
@json_option
def deny_command(checkpoint: str, reason: str, home: Path | None, as_json: bool) -> None:
    """Deny CHECKPOINT (signed with this controller's key)."""
    _decide(checkpoint, False, reason, home, as_json)
