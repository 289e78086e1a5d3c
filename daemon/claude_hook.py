"""``starmux hook claude-pretooluse``: Claude Code's PreToolUse hook as a starmux checkpoint.

Claude Code runs the hook before each matching tool call, with one JSON object on
stdin (Claude Code hooks reference, "PreToolUse Input")::

    {"session_id": "...", "transcript_path": "...", "cwd": "...",
     "permission_mode": "default", "hook_event_name": "PreToolUse",
     "tool_name": "Bash", "tool_input": {"command": "...", ...}, "tool_use_id": "toolu_..."}

and reads its decision from stdout when the hook exits 0 ("PreToolUse Decision
Control"; the older top-level ``decision``/``reason`` fields are deprecated)::

    {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                            "permissionDecision": "allow" | "deny" | "ask",
                            "permissionDecisionReason": "..."}}

``deny`` blocks the call and shows the reason to Claude; ``allow`` lets it run
(deny and ask permission *rules* still apply) and shows the reason to the user.
Exit 0 with no output is "no opinion": Claude Code's own permission flow decides.

What this hook answers:

- a tool the ``--tools`` regex does not fully match: no opinion;
- outside a starmux session (neither ``STARMUX_SESSION`` nor ``STARMUX_API`` set): no
  opinion and a note on stderr, so the same project settings work when a person runs
  Claude at a terminal (only one of the two set is a broken session: deny);
- approved, or expired with ``--default approve``: ``allow``;
- denied, expired with the default deny, malformed input, or any failure to get a
  decision (daemon unreachable, refused...): ``deny`` with the reason, and a message
  on stderr. It fails closed: an unattended agent never gets a "yes" by accident;
- a bad option (e.g. an invalid ``--tools`` regex) exits 2, which Claude Code
  treats as a blocking error for PreToolUse: the call is blocked too.

Claude Code kills a hook that runs past its own ``timeout`` (seconds, per hook in
``settings.json``), and a killed hook is a non-blocking error, which would let the
call proceed unreviewed: keep that timeout above ``--timeout``, as below.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import click

from starmux.checkpoint_preview import to_json
from starmux.errors import StarmuxError
from starmux.local_api import MAX_BODY, MAX_TITLE, check_key

from .agent_commands import (
    ENV_API,
    ENV_SESSION,
    NotInSession,
    agent_session,
    format_duration,
    request_checkpoint,
    wait_options,
)
from .tool_preview import tool_preview

#: The ``settings.json`` entry that puts this hook in front of Claude Code's tools.
SETTINGS_SNIPPET = """\
{
  "hooks": {
    "PreToolUse": [
      {
        "matcher": "Bash|Write|Edit|MultiEdit|NotebookEdit|WebFetch",
        "hooks": [
          {
            "type": "command",
            "command": "starmux hook claude-pretooluse --timeout 10m --default deny",
            "timeout": 660
          }
        ]
      }
    ]
  }
}
"""

MAX_INPUT = 16 * 1024 * 1024  # a Write of a large file is legitimate; more is refused
_SUMMARY_FIELDS = ("command", "file_path", "notebook_path", "url", "query", "pattern", "path")


class HookInputError(StarmuxError):
    """The hook's stdin is not a PreToolUse payload."""


@dataclass(frozen=True)
class ToolCall:
    tool_name: str
    tool_input: dict[str, Any]
    session_id: str
    cwd: str
    permission_mode: str
    tool_use_id: str


def parse_payload(raw: bytes) -> ToolCall:
    """Claude Code's PreToolUse stdin → a tool call; raises :class:`HookInputError`."""
    if len(raw) > MAX_INPUT:
        raise HookInputError(f"the hook input is larger than {MAX_INPUT} bytes")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HookInputError("the hook input is not JSON") from exc
    if not isinstance(payload, dict):
        raise HookInputError("the hook input is not a JSON object")
    event = payload.get("hook_event_name", "PreToolUse")
    if event != "PreToolUse":
        raise HookInputError(f"this hook handles PreToolUse, not {str(event)[:40]!r}")
    tool_name, tool_input = payload.get("tool_name"), payload.get("tool_input")
    if not isinstance(tool_name, str) or not tool_name:
        raise HookInputError("the hook input has no tool_name")
    if not isinstance(tool_input, dict):
        raise HookInputError("the hook input has no tool_input object")

    def text(name: str) -> str:
        value = payload.get(name, "")
        return value if isinstance(value, str) else ""

    return ToolCall(
        tool_name,
        tool_input,
        text("session_id"),
        text("cwd"),
        text("permission_mode"),
        text("tool_use_id"),
    )


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def checkpoint_title(call: ToolCall) -> str:
    """``Claude wants to run Bash: <first line of the command>``, at most 200 characters."""
    verb = "run" if call.tool_name == "Bash" else "use"
    head = f"Claude wants to {verb} {_clip(_one_line(call.tool_name), 60) or '?'}"
    for field in _SUMMARY_FIELDS:
        value = call.tool_input.get(field)
        if isinstance(value, str) and value.strip():
            lines = value.strip().splitlines() or [""]
            summary = _one_line(lines[0]) + (" …" if len(lines) > 1 else "")
            return _clip(f"{head}: {summary}", MAX_TITLE)
    return _clip(head, MAX_TITLE)


def checkpoint_body(call: ToolCall) -> str:
    """Where and what, then the tool input as pretty JSON, cut to the body limit."""
    lines = [f"Tool: {call.tool_name}"]
    for label, value in (
        ("Working directory", call.cwd),
        ("Claude session", call.session_id),
        ("Permission mode", call.permission_mode),
    ):
        if value:
            lines.append(f"{label}: {value}")
    text = (
        "\n".join(lines)
        + "\n\nInput:\n"
        + json.dumps(call.tool_input, indent=2, ensure_ascii=False)
    )
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_BODY:
        return data.decode("utf-8")
    marker = f"\n… (truncated: {len(data)} bytes in all)"
    keep = MAX_BODY - len(marker.encode("utf-8"))
    return data[:keep].decode("utf-8", "ignore") + marker


def hook_output(allow: bool, reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "allow" if allow else "deny",
            "permissionDecisionReason": reason,
        }
    }


def _idempotency_key(call: ToolCall) -> str | None:
    """One tool call, one checkpoint: a rerun of the hook for it joins the same one."""
    key = f"claude-{call.tool_use_id}"
    try:
        return check_key(key) if call.tool_use_id else None
    except StarmuxError:
        return None


def _tools_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return re.compile(value)
    except re.error as exc:
        raise click.BadParameter(f"not a regular expression: {exc}") from None


@click.group("hook")
def hook_group() -> None:
    """Adapters that turn an agent's own hooks into starmux checkpoints."""


@hook_group.command("claude-pretooluse")
@wait_options(
    timeout_help="How long to wait for a decision (keep the hook's timeout in settings.json "
    "above it).",
    default_help="What applies if nobody decides in time.",
)
@click.option(
    "--tools",
    default=None,
    metavar="REGEX",
    callback=_tools_option,
    help="Only ask for tool names that fully match REGEX; others get no opinion.",
)
def claude_pretooluse_command(timeout: float, default: str, tools: re.Pattern[str] | None) -> None:
    """Claude Code PreToolUse hook: ask a controller before the tool runs.

    Reads the hook's JSON on stdin and prints Claude Code's decision JSON. Add it to
    .claude/settings.json (see the README for the snippet).
    """
    try:
        call = parse_payload(sys.stdin.buffer.read(MAX_INPUT + 1))
    except HookInputError as exc:
        _deny(f"starmux could not read the PreToolUse input ({exc.message}); denied to be safe")
        return
    if tools is not None and not tools.fullmatch(call.tool_name):
        return
    try:
        where = agent_session()
    except NotInSession as exc:
        if os.environ.get(ENV_SESSION) or os.environ.get(ENV_API):  # half a session: broken
            _deny(f"starmux: {exc.message}; denied to be safe")
        else:
            click.echo("starmux: not inside a starmux session; no opinion on this call", err=True)
        return
    try:
        decision = request_checkpoint(
            where,
            title=checkpoint_title(call),
            body=checkpoint_body(call),
            timeout=timeout,
            default_approve=default == "approve",
            key=_idempotency_key(call),
            # What the tool would do (the command; the diff of an edit against the
            # file as it is now), computed here on the machine.
            preview=to_json(tool_preview(call.tool_name, call.tool_input, call.cwd)),
        )
    except StarmuxError as exc:
        _deny(f"starmux could not get a decision ({exc.message}); denied to be safe")
        return
    except Exception as exc:  # fail closed, whatever broke
        _deny(f"starmux failed ({type(exc).__name__}); denied to be safe")
        return
    if decision.decision == "expired":
        verdict = "allowed" if decision.approved else "denied"
        reason = f"No decision in starmux within {format_duration(timeout)}; {verdict} by default"
    else:
        reason = f"{decision.decision.capitalize()} in starmux"
        if decision.decided_by:
            reason += f" by {decision.decided_by}"
        if decision.reason:
            reason += f": {decision.reason}"
    _emit(hook_output(decision.approved, reason))


def _deny(reason: str) -> None:
    click.echo(reason, err=True)
    _emit(hook_output(False, reason))


def _emit(output: dict[str, Any]) -> None:
    click.echo(json.dumps(output))
