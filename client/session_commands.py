"""Controller commands for sessions and approvals: thin clients of the controller agent
(:mod:`starmux.client.agent_client`), which holds the relay connection and the cache.

Every field that came from a machine (ids, statuses, titles, bodies, errors, hints,
names) goes through :func:`printable` before it reaches the terminal: a compromised
machine must not be able to write escape sequences (OSC 52 to the clipboard, CSI to
rewrite other lines) into the controller's terminal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from starmux.errors import StarmuxError

from . import agent_client
from .agent_cli import home_option, json_option, printable, progress, when
from .agent_cli import resolve_home as _home


def say_refused(reply: dict[str, Any]) -> None:
    """Queued commands a machine refused since the last command said so (once each),
    and what the relay's machine list gets wrong."""
    for warning in reply.get("warnings") or []:
        click.echo(f"warning: {printable(warning)}", err=True)
    refused = reply.get("refused")
    if not isinstance(refused, list):
        return
    for entry in refused:
        if not isinstance(entry, dict):
            continue
        click.echo(
            f"note: a queued {printable(entry.get('kind', '?'))} for "
            f"{printable(entry.get('machine', '?'))} was refused: "
            f"{printable(entry.get('error', ''))} (see `starmux outbox`)",
            err=True,
        )


def refuse_changed_relay(reply: dict[str, Any]) -> None:
    """A relay that answers with another key than the pinned one is not an outage to
    paper over with cached data: it may be an impostor. Every command says so."""
    relay = reply.get("relay") or {}
    if relay.get("key_changed"):
        raise StarmuxError(printable(relay.get("error", "")), hint=printable(relay.get("hint", "")))


def listed_rows(reply: dict[str, Any], key: str, as_json: bool) -> list[dict[str, Any]] | None:
    """The rows of a listing answered from the agent's cache (``reply[key]``): refusals
    and a changed relay end the command; with ``--json`` the rows are printed and None
    is returned (nothing more to print); else how fresh each machine's part is is said
    and the rows are returned for the caller to print."""
    say_refused(reply)
    rows = [r for r in reply.get(key) or [] if isinstance(r, dict)]
    refuse_changed_relay(reply)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return None
    say_freshness(reply)
    return rows


def say_freshness(reply: dict[str, Any]) -> None:
    """For every machine whose part of the answer is not live: how old it is."""
    refuse_changed_relay(reply)
    relay = reply.get("relay") or {}
    if not relay.get("connected"):
        click.echo(
            f"warning: relay unreachable ({printable(relay.get('error', ''))}); "
            "showing cached data",
            err=True,
        )
    for machine in reply.get("machines") or []:
        if not isinstance(machine, dict) or machine.get("live"):
            continue
        name = printable(machine.get("name", "?"))
        as_of = machine.get("last_live") or machine.get("last_seen")
        state = "syncing" if machine.get("online") else "offline"
        fresh = when(as_of) if as_of else "its last sync"
        click.echo(f"note: {name} is {state}; its part is as of {fresh}", err=True)


def _outcome_json(reply: dict[str, Any], **extra: Any) -> str:
    keys = ("command_id", "machine", "queued", "error", "result")
    return json.dumps({**{k: reply.get(k) for k in keys}, "ok": reply.get("accepted"), **extra})


def _report(reply: dict[str, Any], done: str, as_json: bool, **extra: Any) -> None:
    say_refused(reply)
    if as_json:
        click.echo(_outcome_json(reply, **extra))
    elif reply.get("queued"):
        click.echo(
            f"queued: {printable(reply.get('machine', '?'))} is offline or did not answer "
            "in time; the controller agent delivers the command when it is back "
            "(see `starmux outbox`)"
        )
    elif reply.get("accepted"):
        click.echo(done)
    if reply.get("accepted") is False:
        if not as_json:
            click.echo(f"error: {printable(reply.get('error') or '')}", err=True)
            if reply.get("hint"):
                click.echo(f"hint: {printable(reply['hint'])}", err=True)
        raise SystemExit(1)


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def start_session(
    machine: str,
    cwd: str,
    title: str,
    env_pairs: tuple[str, ...],
    pty: bool,
    attachments: tuple[Path, ...],
    argv: tuple[str, ...],
    home: Path | None,
    as_json: bool,
) -> None:
    """`starmux run --machine M -- COMMAND ARGS...` without task options: a plain
    session on that machine (the click command lives in client/task_commands.py)."""
    fields: dict[str, Any] = {
        "machine": machine,
        "argv": list(argv),
        "cwd": cwd,
        "title": title,
        "env": _env(env_pairs),
        "pty": pty,
    }
    if attachments:
        from .artifact_commands import call_with_progress, checked_attachments

        fields["attachments"] = checked_attachments(attachments)
        reply = call_with_progress(_home(home), "run", "sending attachments", fields, as_json)
    else:
        with progress(f"starting it on {machine}"):
            reply = agent_client.call(_home(home), "run", **fields)
    session = printable(reply.get("session", "?"))
    _report(
        reply,
        f"started session {session} on {printable(reply.get('machine', '?'))}\n"
        f"follow it: starmux watch {session}",
        as_json,
        session=reply.get("session"),
    )


@click.command("cancel")
@click.argument("session")
@home_option
@json_option
def cancel_command(session: str, home: Path | None, as_json: bool) -> None:
    """Cancel SESSION (SIGTERM, then SIGKILL after a grace period)."""
    with progress("cancelling"):
        reply = agent_client.call(_home(home), "cancel", session=session)
    _report(reply, f"cancelled {printable(session)}", as_json, session=session)


def _session_line(r: dict[str, Any]) -> str:
    code = f" ({r.get('exit_code')})" if r.get("exit_code") is not None else ""
    status = printable(str(r.get("status", "?")) + code)
    line = (
        f"{printable(r.get('id', '?'))}  {printable(r.get('machine', '?')):<12} "
        f"{status:<18} {when(r.get('created_at'))}  {printable(r.get('title', ''))}"
    )
    if r.get("reason"):
        line += f"\n    {printable(r['reason'])}"
    return line


@click.command("sessions")
@click.option("--machine", "-m", default=None, help="Only this machine.")
@home_option
@json_option
def sessions_command(machine: str | None, home: Path | None, as_json: bool) -> None:
    """List sessions on all machines (from the controller agent's cache)."""
    reply = agent_client.call(_home(home), "sessions", machine=machine)
    rows = listed_rows(reply, "sessions", as_json)
    if rows is None:
        return
    if not rows:
        click.echo("no sessions yet: starmux run --machine M -- COMMAND")
    for r in rows:
        click.echo(_session_line(r))


def _write_output(stream: str, data: bytes) -> None:
    target = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
    target.write(data)
    target.flush()


def _exit_code(reply: dict[str, Any]) -> int:
    """A watched session's own exit code where it has one (1 if it failed without)."""
    if reply.get("status") == "succeeded":
        return 0
    code = reply.get("exit_code")
    if type(code) is int and 0 < code < 256:
        return code
    return 1


def _ending(session: str, reply: dict[str, Any]) -> str:
    status = str(reply.get("status", "?"))
    code = reply.get("exit_code")
    text = status + (f" ({code})" if code is not None else "")
    if status == "revoked":
        text += ": its machine was revoked, so it reports nothing more"
    elif reply.get("reason") and status != "succeeded":
        text += f": {reply['reason']}"
    return f"[{printable(session)}: {printable(text)}]"


def _json_lines(home: Path, session: str, *, follow: bool) -> int:
    def write(stream: str, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        click.echo(json.dumps({"type": "output", "stream": stream, "data": text}))

    def status(text: str) -> None:
        click.echo(json.dumps({"type": "status", "status": text}))

    reply = agent_client.watch(home, session, write=write, status=status, follow=follow)
    click.echo(
        json.dumps(
            {
                "type": "end",
                "session": session,
                "status": reply.get("status"),
                "exit_code": reply.get("exit_code"),
            }
        )
    )
    return _exit_code(reply)


@click.command("logs")
@click.argument("session")
@home_option
@json_option
def logs_command(session: str, home: Path | None, as_json: bool) -> None:
    """Print SESSION's output so far (from the controller agent's cache)."""
    if as_json:
        _json_lines(_home(home), session, follow=False)
        return
    reply = agent_client.watch(
        _home(home), session, write=_write_output, status=lambda text: None, follow=False
    )
    say_refused(reply)
    click.echo(_ending(session, reply), err=True)


@click.command("watch")
@click.argument("session")
@home_option
@json_option
def watch_command(session: str, home: Path | None, as_json: bool) -> None:
    """Print SESSION's output so far, then follow it live until it ends; exits with
    the session's exit code."""
    if as_json:
        raise SystemExit(_json_lines(_home(home), session, follow=True))
    reply = agent_client.watch(
        _home(home),
        session,
        write=_write_output,
        status=lambda text: click.echo(f"[{printable(session)}: {printable(text)}]", err=True),
    )
    say_refused(reply)
    if reply.get("status") == "revoked":
        click.echo(_ending(session, reply), err=True)
    raise SystemExit(_exit_code(reply))
