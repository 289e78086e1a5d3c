"""Controller commands for tasks (issue 18): ``run`` to tags or with task options,
``tasks [show ID]``, ``cancel`` of a task or a session, ``machines tag``.

Thin clients of the controller agent, which places tasks (:mod:`.fleet`). Every
field that came from a machine or the agent is escaped before it is printed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from starmux import agent_protocol as wire

from . import agent_client
from .agent_cli import home_option, json_option, printable, progress, when
from .agent_cli import resolve_home as _home
from .session_commands import _env, _report, say_refused, start_session

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
FINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "lost", "expired"})
STATES = ("queued", "assigned", "accepted", "running", "awaiting_approval", *sorted(FINAL))


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        match = _DURATION.match(str(value).strip())
        seconds = float(match.group(1)) * _UNIT[match.group(2)] if match else 0.0
        if not 0 < seconds <= 366 * 86400:
            self.fail(f"{value!r} is not a duration (e.g. 30s, 5m, 2h)", param, ctx)
        return seconds


DURATION = Duration()


def _task_line(t: dict[str, Any]) -> str:
    code = f" ({t['exit_code']})" if t.get("exit_code") is not None else ""
    state = printable(str(t.get("state", "?")) + code)
    machine = printable(t.get("machine") or "-")
    started = when(t["started_at"]) if t.get("started_at") else "-"
    # Why it failed without an exit code (a machine's refusal: its words, escaped).
    reason = f"  ({printable(t['reason'])})" if t.get("reason") else ""
    return (
        f"{printable(t.get('id', '?')):<14} {state:<18} {machine:<12} "
        f"{printable(t.get('target', '?')):<16} #{t.get('attempt', '?')}  "
        f"queued {when(t.get('queued_at'))}  started {started}{reason}"
    )


def _event_line(task: dict[str, Any], e: dict[str, Any]) -> str:
    """One transition as ``tasks --watch`` prints it (machine text escaped)."""
    where = f", {printable(e['machine'])}" if e.get("machine") else ""
    why = f": {printable(e['reason'])}" if e.get("reason") else ""
    code = (
        f" ({task['exit_code']})"
        if e.get("new") == task.get("state") and task.get("exit_code") is not None
        else ""
    )
    return (
        f"{when(e.get('at'))}  {printable(task.get('id', '?')):<14} #{e.get('attempt')}  "
        f"{printable(e.get('old'))} → {printable(e.get('new'))}{code}  "
        f"({printable(e.get('trigger'))}{where}){why}"
    )


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--machine", "-m", default=None, help="Machine name or fingerprint.")
@click.option("--to", "target", default=None, help="Tags a machine must all carry: gpu,os=linux.")
@click.option("--count", default=1, type=click.IntRange(1, 1000), help="Fan out N tasks.")
@click.option("--priority", default=0, type=click.IntRange(-1000, 1000), help="Higher first.")
@click.option(
    "--strategy",
    default="least-loaded",
    type=click.Choice(["least-loaded", "round-robin", "affinity"]),
    help="How to choose among eligible machines.",
)
@click.option("--schedule-to-start", type=DURATION, default=None, help="Expire if not started.")
@click.option(
    "--start-to-close", "--timeout", "start_to_close", type=DURATION, default=None,
    help="Kill it on the machine after this long (timed_out).",
)  # fmt: skip
@click.option(
    "--heartbeat-timeout", type=DURATION, default=None,
    help="Lost once its machine is unheard for this long [60s].",
)  # fmt: skip
@click.option(
    "--ack-timeout", type=DURATION, default=None,
    help="Place it elsewhere if its machine does not accept it in this long [30s].",
)  # fmt: skip
@click.option("--retry-on-lost", is_flag=True, help="Rerun elsewhere if its machine is lost.")
@click.option("--id", "task_id", default="", help="Idempotency id: the same id never runs twice.")
@click.option("--cwd", default="~", help="Working directory on the machine [its home].")
@click.option("--title", default="", help="A title for the session.")
@click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE for the process (repeatable).")
@click.option("--pty", is_flag=True, help="Give the process a terminal (interactive agents).")
@click.option(
    "--attach",
    "attachments",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A file to deliver before the command starts (repeatable; sessions only); the "
    "session finds it in $STARMUX_ATTACHMENTS.",
)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@home_option
@json_option
def run_command(
    machine: str | None,
    target: str | None,
    count: int,
    priority: int,
    strategy: str,
    schedule_to_start: float | None,
    start_to_close: float | None,
    heartbeat_timeout: float | None,
    ack_timeout: float | None,
    retry_on_lost: bool,
    task_id: str,
    cwd: str,
    title: str,
    env_pairs: tuple[str, ...],
    pty: bool,
    attachments: tuple[Path, ...],
    argv: tuple[str, ...],
    home: Path | None,
    as_json: bool,
) -> None:
    """Run COMMAND on a machine (a session) or as tasks placed by tags:

    \b
    starmux run --machine M -- COMMAND ARGS...   (a session, at once)
    starmux run --to gpu --count 3 -- COMMAND    (tasks: placed, queued, retried)
    """
    if (machine is None) == (target is None):
        raise click.UsageError("give --machine NAME or --to TAG[,TAG] (one of them)")
    is_task = target is not None or any(
        (
            count != 1,
            priority,
            schedule_to_start,
            start_to_close,
            heartbeat_timeout,
            ack_timeout,
            retry_on_lost,
            task_id,
            strategy != "least-loaded",
        )
    )
    if not is_task:
        assert machine is not None  # no --to, so --machine (checked above)
        start_session(
            machine=machine, cwd=cwd, title=title, env_pairs=env_pairs, pty=pty,
            attachments=attachments, argv=argv, home=home, as_json=as_json,
        )  # fmt: skip
        return
    if attachments:
        raise click.UsageError("--attach is for a session on one machine (--machine M only)")
    fields: dict[str, Any] = {
        "argv": list(argv),
        "target": target or "",
        "machine": machine or "",
        "count": count,
        "priority": priority,
        "strategy": strategy,
        "schedule_to_start": schedule_to_start,
        "start_to_close": start_to_close,
        "retry_on_lost": retry_on_lost,
        "id": task_id,
        "cwd": cwd,
        "title": title,
        "env": _env(env_pairs),
        "pty": pty,
    }
    if heartbeat_timeout is not None:
        fields["heartbeat"] = heartbeat_timeout
    if ack_timeout is not None:
        fields["assign_ack"] = ack_timeout
    with progress("placing"):
        reply = agent_client.call(_home(home), "submit", **fields)
    say_refused(reply)
    tasks = [t for t in reply.get("tasks") or [] if isinstance(t, dict)]
    if as_json:
        click.echo(json.dumps({"duplicate": reply.get("duplicate"), "tasks": tasks}, indent=2))
        return
    if reply.get("duplicate"):
        click.echo("already submitted (same id): nothing new runs", err=True)
    for t in tasks:
        where = (
            f"on {printable(t.get('machine'))}"
            if t.get("machine")
            else f"waiting for a machine ({printable(t.get('target', '?'))})"
        )
        click.echo(f"{printable(t.get('id', '?'))}  {printable(t.get('state', '?'))}  {where}")


@click.group("tasks", invoke_without_command=True)
@click.option(
    "--state",
    default=None,
    type=click.Choice(STATES),
    help="Only tasks in this state.",
)
@click.option("--watch", "follow", is_flag=True, help="Print changes until every task ended.")
@home_option
@json_option
@click.pass_context
def tasks_command(
    ctx: click.Context, state: str | None, follow: bool, home: Path | None, as_json: bool
) -> None:
    """List tasks: where each runs, its state, attempt and times."""
    if ctx.invoked_subcommand is not None:
        return
    state = state or ""
    home = _home(home)
    if not follow:
        tasks = _tasks(home, state)
        if as_json:
            click.echo(json.dumps(tasks, indent=2))
        elif not tasks:
            click.echo("no tasks yet: starmux run --to TAG -- COMMAND")
        for t in tasks:
            if not as_json:
                click.echo(_task_line(t))
        return
    # Streamed by the agent as the book stores each step (no polling): the tasks
    # first, then one line per transition; the agent ends it when all have ended.
    for answer in agent_client.stream(home, "tasks", state=state, follow=True):
        if isinstance(answer, wire.Reply):
            say_refused(agent_client.checked(answer))
            return
        if answer.kind != "task" or not isinstance(answer.fields.get("task"), dict):
            continue
        task, event = answer.fields["task"], answer.fields.get("event")
        if as_json:
            click.echo(json.dumps({"task": task, "event": event}))
        elif isinstance(event, dict):
            click.echo(_event_line(task, event))
        else:
            click.echo(_task_line(task))


def _tasks(home: Path, state: str) -> list[dict[str, Any]]:
    reply = agent_client.call(home, "tasks", state=state)
    say_refused(reply)
    return [t for t in reply.get("tasks") or [] if isinstance(t, dict) and "id" in t]


@tasks_command.command("show")
@click.argument("task")
@home_option
@json_option
def show_command(task: str, home: Path | None, as_json: bool) -> None:
    """One task and every transition it went through."""
    reply = agent_client.call(_home(home), "task", task=task)
    if as_json:
        click.echo(json.dumps({"task": reply.get("task"), "events": reply.get("events")}))
        return
    click.echo(_task_line(reply.get("task") or {}))
    for e in reply.get("events") or []:
        click.echo(
            f"  {when(e.get('at'))}  #{e.get('attempt')}  {printable(e.get('old'))} → "
            f"{printable(e.get('new'))}  ({printable(e.get('trigger'))}"
            f"{', ' + printable(e['machine']) if e.get('machine') else ''})"
            f"{': ' + printable(e['reason']) if e.get('reason') else ''}"
        )


@tasks_command.command("cancel")
@click.argument("task")
@home_option
@json_option
@click.pass_context
def tasks_cancel_command(ctx: click.Context, task: str, home: Path | None, as_json: bool) -> None:
    """Cancel TASK (a waiting task is withdrawn, a running one cancelled)."""
    ctx.invoke(cancel_command, target=task, home=home, as_json=as_json)


@click.command("cancel")
@click.argument("target", metavar="TASK|SESSION")
@home_option
@json_option
def cancel_command(target: str, home: Path | None, as_json: bool) -> None:
    """Cancel a task (withdrawn if waiting) or a session (SIGTERM, then SIGKILL)."""
    with progress("cancelling"):
        reply = agent_client.call(_home(home), "cancel", session=target)
    task = reply.get("task")
    if isinstance(task, dict):
        if as_json:
            click.echo(json.dumps({"task": task, "cancelling": reply.get("cancelling")}))
        else:
            state = "cancelling" if reply.get("cancelling") else task.get("state", "?")
            click.echo(f"task {printable(target)}: {printable(state)}")
        return
    _report(reply, f"cancelled {printable(target)}", as_json, session=target)


@click.command("tag")
@click.argument("machine")
@click.argument("tags", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@home_option
@json_option
def tag_command(
    machine: str, tags: tuple[str, ...], remove: bool, home: Path | None, as_json: bool
) -> None:
    """Add (or --remove) TAGS on MACHINE; the machine keeps them across restarts."""
    add, drop = ([], list(tags)) if remove else (list(tags), [])
    with progress(f"tagging {machine}"):
        reply = agent_client.call(_home(home), "tag", machine=machine, add=add, remove=drop)
    _report(
        reply,
        f"{printable(reply.get('machine', machine))} tags: {printable(reply.get('result') or '-')}",
        as_json,
        tags=(reply.get("result") or "").split(",") if reply.get("result") else [],
    )
