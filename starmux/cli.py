"""The ``starmux`` command: one entry point that mounts each role's commands lazily.

``starmux relay serve`` imports only relay code, ``starmux daemon ...`` only daemon
code, and controller commands (``init``, ``pair``, ``machines``...) only client code,
so each role starts fast and a relay host never loads controller code.

This is the one place that turns errors into exit codes: a :class:`StarmuxError`
prints ``error: <message>`` and ``hint: <hint>`` on stderr; anything unexpected
prints one line and asks for ``--debug``, which shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .errors import StarmuxError

#: command name → "module:attribute" of a click command or group
LAZY_COMMANDS: dict[str, str] = {
    "relay": "starmux.relay.cli:relay_group",
    "daemon": "starmux.daemon.cli:daemon_group",
    "init": "starmux.client.commands:init_command",
    "pair": "starmux.client.commands:pair_command",
    "machines": "starmux.client.agent_commands:machines_command",
    "revoke": "starmux.client.agent_commands:revoke_command",
    "outbox": "starmux.client.agent_commands:outbox_command",
    "controller": "starmux.client.agent_commands:controller_group",
    "run": "starmux.client.task_commands:run_command",
    "cancel": "starmux.client.task_commands:cancel_command",
    "tasks": "starmux.client.task_commands:tasks_command",
    "sessions": "starmux.client.session_commands:sessions_command",
    "logs": "starmux.client.session_commands:logs_command",
    "watch": "starmux.client.session_commands:watch_command",
    "approvals": "starmux.client.review_commands:approvals_command",
    "approve": "starmux.client.review_commands:approve_command",
    "deny": "starmux.client.review_commands:deny_command",
    "rules": "starmux.client.review_commands:rules_command",
    "diff": "starmux.client.review_commands:diff_command",
    "checkpoint": "starmux.daemon.agent_commands:checkpoint_command",
    "cost": "starmux.daemon.agent_commands:cost_command",
    "artifact": "starmux.daemon.artifact_command:artifact_group",
    "artifacts": "starmux.client.artifact_commands:artifacts_command",
    "get": "starmux.client.artifact_commands:get_command",
    "hook": "starmux.daemon.claude_hook:hook_group",
    "demo": "starmux.client.commands:demo_command",
    "devices": "starmux.client.device_commands:devices_group",
    "link": "starmux.client.device_commands:link_command",
    "doctor": "starmux.node.doctor:doctor_command",
    "notify": "starmux.client.notify_commands:notify_group",
}


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module_name, attribute = self._lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self._lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


def _version() -> str:
    # Imported here: importlib.metadata costs a tenth of a second at every start, and
    # only --version needs it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("starmux")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"starmux, version {_version()}")
        ctx.exit()


def _global_flags_anywhere(argv: list[str]) -> list[str]:
    """``--debug`` is accepted after a subcommand too (hints say "add --debug"), but
    never taken from after ``--``: there it belongs to the command being run."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--debug" not in argv[:end]:
        return argv
    return ["--debug", *(arg for arg in argv[:end] if arg != "--debug"), *argv[end:]]


@click.group(
    cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option("--debug", is_flag=True, envvar="STARMUX_DEBUG", help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Delegate, watch and approve agent work on many machines from one controller."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _colour(stream: Any) -> bool:
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def report_error(error: StarmuxError) -> None:
    colour = _colour(sys.stderr)
    click.secho(f"error: {error.message}", fg="red" if colour else None, err=True)
    if error.hint:
        click.secho(f"hint: {error.hint}", fg="yellow" if colour else None, err=True)


def main(argv: list[str] | None = None) -> int:
    args = _global_flags_anywhere(list(argv if argv is not None else sys.argv[1:]))
    debug = args[:1] == ["--debug"] or bool(os.environ.get("STARMUX_DEBUG"))
    try:
        result = cli.main(
            args=args,
            prog_name="starmux",
            standalone_mode=False,
            # click already drops colour when output is not a terminal; NO_COLOR
            # (no-color.org) turns it off on terminals too.
            color=False if "NO_COLOR" in os.environ else None,
        )
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except StarmuxError as exc:
        if debug:
            raise
        report_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with --debug for the traceback, and report it", err=True)
        return 70
    # In non-standalone mode click *returns* a ctx.exit(n) code instead of raising.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
