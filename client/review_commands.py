"""Controller commands for review (issue 19): ``approvals [show ID]``, ``approve`` and
``deny`` with approval scopes, ``rules``, ``diff``.

Every line that came from a machine (titles, commands, diffs, paths, errors) goes
through :func:`terminal_line` before it reaches the terminal: control characters,
ESC included, are shown as escapes (``\\x1b``), so a machine can neither colour,
move, retitle nor write the clipboard of the controller's terminal. Colour is added
afterwards, by this code only, and only on a terminal (never with ``NO_COLOR``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from . import agent_client
from .agent_cli import home_option, json_option, printable, progress, when
from .agent_cli import resolve_home as _home
from .session_commands import _report, listed_rows, refuse_changed_relay, say_refused

SHORT_LINES = 8  # lines of a preview in the `approvals` listing


def terminal_line(text: str) -> str:
    """One line of machine text, safe for a terminal; tabs become spaces (a tab is
    harmless, and code and diffs are full of them)."""
    return printable(text.expandtabs(8))


def terminal_lines(text: str) -> Iterator[str]:
    """Lines of machine text, each escaped; only ``\\n`` ends a line (every other
    line-breaking character is escaped within its line)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        yield terminal_line(line)


def _colour_on() -> bool:
    return "NO_COLOR" not in os.environ and sys.stdout.isatty()


def diff_line(line: str, colour: bool) -> str:
    """An escaped diff line, coloured like git's on a terminal."""
    if not colour:
        return line
    if line.startswith(("+++", "---", "diff ", "index ", "new file", "deleted file")):
        return click.style(line, bold=True)
    if line.startswith("@@"):
        return click.style(line, fg="cyan")
    if line.startswith("+"):
        return click.style(line, fg="green")
    if line.startswith("-"):
        return click.style(line, fg="red")
    return line


def _echo_diff(text: str, *, indent: str = "", limit: int | None = None) -> None:
    colour = _colour_on()
    lines = list(terminal_lines(text))
    for line in lines[:limit]:
        click.echo(indent + diff_line(line, colour), color=colour)
    if limit is not None and len(lines) > limit:
        click.echo(f"{indent}… ({len(lines) - limit} more lines)")


def _short_preview(preview: dict[str, Any], checkpoint: str) -> Iterable[str]:
    kind, text = preview.get("type"), str(preview.get("text", ""))
    if kind == "command":
        lines = list(terminal_lines(text)) or [""]
        yield "    $ " + lines[0][:200] + (" …" if len(lines) > 1 else "")
        if preview.get("cwd"):
            yield "      in " + terminal_line(str(preview["cwd"]))
    elif kind == "diff":
        added = sum(1 for x in text.split("\n") if x.startswith("+") and not x.startswith("+++"))
        removed = sum(1 for x in text.split("\n") if x.startswith("-") and not x.startswith("---"))
        yield f"    edit {terminal_line(str(preview.get('subject', '')))} (+{added} -{removed})"
    else:
        for line in list(terminal_lines(text))[:3]:
            yield "    " + line[:200]
    if preview.get("truncated"):
        yield f"    (preview cut: {preview.get('full_size')} bytes in all)"
    yield f"    whole: starmux approvals show {printable(checkpoint)}"


def _body_lines(body: str) -> Iterable[str]:
    lines = list(terminal_lines(body))
    for line in lines[:12]:
        yield "    " + line[:200]
    if len(lines) > 12:
        yield f"    … ({len(lines) - 12} more lines: starmux approvals show ID)"


def _header(c: dict[str, Any]) -> str:
    return (
        f"{printable(c.get('id', '?'))}  {printable(c.get('machine', '?'))}  "
        f"{printable(c.get('session', '?'))}  {printable(c.get('title', ''))}  "
        f"(expires {when(c.get('expires_at'))}, default {printable(c.get('default', '?'))})"
    )


def _show(home: Path, checkpoint: str, as_json: bool) -> None:
    reply = agent_client.call(home, "approval", checkpoint=checkpoint)
    say_refused(reply)
    refuse_changed_relay(reply)
    entry = reply.get("approval") or {}
    if as_json:
        click.echo(json.dumps(entry, indent=2))
        return
    click.echo(_header(entry))
    if entry.get("decision"):
        by = f" by {printable(entry['decided_by'])}" if entry.get("decided_by") else ""
        click.echo(f"  {printable(entry['decision'])}{by}: {printable(entry.get('reason') or '')}")
    body = entry.get("body")
    if isinstance(body, str) and body:
        click.echo("")
        for line in terminal_lines(body):
            click.echo("  " + line)
    preview = entry.get("preview")
    if isinstance(preview, dict):
        kind = printable(preview.get("type", "?"))
        tool = printable(preview.get("tool", ""))
        click.echo(f"\n{kind} preview ({tool}), cwd {terminal_line(str(preview.get('cwd', '')))}:")
        text = str(preview.get("text", ""))
        if preview.get("type") == "diff":
            _echo_diff(text)
        else:
            for line in terminal_lines(text):
                click.echo(line)
        if preview.get("truncated"):
            click.echo(
                f"(preview cut at the cap: {len(text.encode())} of "
                f"{preview.get('full_size')} bytes shown)"
            )


@click.command("approvals")
@click.argument("words", nargs=-1, metavar="[show ID]")
@home_option
@json_option
def approvals_command(words: tuple[str, ...], home: Path | None, as_json: bool) -> None:
    """Checkpoints waiting for a decision, on every machine, each with a short preview
    of what it would do; `approvals show ID` prints one whole (its diff coloured)."""
    if words:
        if len(words) != 2 or words[0] != "show":
            raise click.UsageError("use `starmux approvals` or `starmux approvals show ID`")
        _show(_home(home), words[1], as_json)
        return
    reply = agent_client.call(_home(home), "approvals")
    rows = listed_rows(reply, "approvals", as_json)
    if rows is None:
        return
    if not rows:
        click.echo("nothing waits for approval")
    for c in rows:
        click.echo(_header(c))
        preview = c.get("preview")
        if isinstance(preview, dict):
            for line in _short_preview(preview, str(c.get("id", "?"))):
                click.echo(line)
            continue
        body = c.get("body")
        if isinstance(body, str) and body:
            for line in _body_lines(body):
                click.echo(line)


def _decide(
    checkpoint: str,
    approve: bool,
    reason: str,
    for_session: bool,
    rule: str | None,
    home: Path | None,
    as_json: bool,
) -> None:
    with progress("delivering the signed decision"):
        reply = agent_client.call(
            _home(home),
            "decide",
            checkpoint=checkpoint,
            approve=approve,
            reason=reason,
            for_session=for_session or rule is not None,
            rule=rule,
        )
    verb = "approved" if approve else "denied"
    done = f"{verb} {printable(checkpoint)}"
    scope = reply.get("rule")
    if isinstance(scope, dict):
        effect = "allows" if approve else "denies"
        done += (
            f"\nrule {printable(scope.get('id', '?'))} {effect} "
            f"{printable(scope.get('pattern', '?'))} for the rest of the session "
            "(see `starmux rules SESSION`)"
        )
    _report(reply, done, as_json, checkpoint=checkpoint, rule=scope)


def _scope_options(command: Any) -> Any:
    command = click.option(
        "--rule",
        default=None,
        metavar="PATTERN",
        help="The rule for --for-session, e.g. 'Bash(npm test*)' or 'Edit(src/**)' "
        "[the same tool and command prefix, or the same file].",
    )(command)
    return click.option(
        "--for-session",
        is_flag=True,
        help="Also answer this session's later checkpoints that match the rule.",
    )(command)


@click.command("approve")
@click.argument("checkpoint")
@click.option("--reason", default="", help="Recorded with the decision.")
@_scope_options
@home_option
@json_option
def approve_command(
    checkpoint: str,
    reason: str,
    for_session: bool,
    rule: str | None,
    home: Path | None,
    as_json: bool,
) -> None:
    """Approve CHECKPOINT (signed with this controller's key); with --for-session,
    also later ones of its session that match a rule (deny rules still win)."""
    _decide(checkpoint, True, reason, for_session, rule, home, as_json)


@click.command("deny")
@click.argument("checkpoint")
@click.option("--reason", default="", help="Recorded with the decision.")
@_scope_options
@home_option
@json_option
def deny_command(
    checkpoint: str,
    reason: str,
    for_session: bool,
    rule: str | None,
    home: Path | None,
    as_json: bool,
) -> None:
    """Deny CHECKPOINT (signed with this controller's key); with --for-session, also
    deny later ones of its session that match a rule (a deny rule wins over allows)."""
    _decide(checkpoint, False, reason, for_session, rule, home, as_json)


@click.command("rules")
@click.argument("words", nargs=-1, required=True, metavar="SESSION | remove ID")
@home_option
@json_option
def rules_command(words: tuple[str, ...], home: Path | None, as_json: bool) -> None:
    """The approval rules in force for SESSION; `rules remove ID` removes one."""
    if words[0] == "remove":
        if len(words) != 2:
            raise click.UsageError("use `starmux rules remove ID`")
        with progress("removing the rule"):
            reply = agent_client.call(_home(home), "remove-rule", rule=words[1])
        _report(reply, f"removed rule {printable(words[1])}", as_json, rule=words[1])
        return
    if len(words) != 1:
        raise click.UsageError("use `starmux rules SESSION` or `starmux rules remove ID`")
    reply = agent_client.call(_home(home), "rules", session=words[0])
    say_refused(reply)
    rows = [r for r in reply.get("rules") or [] if isinstance(r, dict)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no rules for {printable(words[0])}: every checkpoint asks a person")
    for r in rows:
        click.echo(
            f"{printable(r.get('id', '?'))}  {printable(r.get('effect', '?')):<5}  "
            f"{printable(r.get('pattern', '?'))}  set by {printable(r.get('set_by', '?'))} "
            f"at {when(r.get('set_at'))}"
        )


@click.command("diff")
@click.argument("session")
@click.option("--stat", is_flag=True, help="Only the changed files and their line counts.")
@home_option
@json_option
def diff_command(session: str, stat: bool, home: Path | None, as_json: bool) -> None:
    """The working-tree diff of SESSION's folder (git, computed on the machine),
    untracked files included."""
    with progress("asking the machine for the diff"):
        reply = agent_client.call(_home(home), "diff", session=session, stat=stat)
    say_refused(reply)
    keys = ("session", "machine", "root", "files", "diff", "full_size", "truncated")
    if as_json:
        click.echo(json.dumps({k: reply.get(k) for k in (*keys, "files_truncated")}, indent=2))
        return
    files = [f for f in reply.get("files") or [] if isinstance(f, dict)]
    if not files:
        click.echo(f"no changes in {terminal_line(str(reply.get('root', '?')))}")
        return
    if stat or not reply.get("diff"):
        for f in files:
            counts = "binary" if f.get("binary") else f"+{f.get('added')} -{f.get('removed')}"
            click.echo(
                f" {printable(f.get('status', '?')):<9} {terminal_line(str(f.get('path', '')))}"
                f"  {printable(counts)}"
            )
    else:
        _echo_diff(str(reply.get("diff", "")))
    if reply.get("truncated"):
        click.echo(f"(diff cut at the cap: {reply.get('full_size')} bytes in all)", err=True)
    if reply.get("files_truncated"):
        click.echo("(not every changed file is listed)", err=True)
