"""Commands an agent runs inside its starmux session: ``checkpoint`` and ``cost``.

The daemon starts every session with ``STARMUX_SESSION`` (the session id),
``STARMUX_API`` (the path of its local API socket) and ``STARMUX_SESSION_TOKEN``
(the session's own secret, which the API requires) in the environment. These
commands talk to that socket with a small blocking client, one JSON line each way
(the protocol is in :mod:`starmux.local_api`).

``starmux checkpoint TITLE`` blocks until a controller decides, and its exit status
is the answer, so a script can say ``starmux checkpoint "Deploy?" && ./deploy``:

====  ==============================================================================
exit  meaning
====  ==============================================================================
0     approved
1     denied
2     expired: nobody decided in time. The default then applies (``--default``, deny
      unless set) and the output says which (text, or ``"approved"`` in ``--json``).
      It is 2 even when that default is approve, so a script can tell "a person
      said yes" from "nobody answered"
3     the daemon refused the request (e.g. unknown session) or failed; its message
      and hint are printed
4     the daemon is unreachable: no socket, nobody listening, no answer in time, or
      the connection dropped before an answer. A checkpoint raised with ``--key``
      stays pending: the same command with the same key picks it up again
5     the daemon's answer broke the protocol
64    usage: a bad option or argument, or not inside a starmux session (``EX_USAGE``;
      click's usual 2 would read as "expired")
70    an unexpected internal error (``--debug`` shows it)
130   interrupted; a raised checkpoint stays pending on the daemon
====  ==============================================================================

``starmux cost`` exits 0 when the report was recorded, else as above (3, 4, 5, 64).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from starmux.errors import ConfigError, ConnectionLost, RemoteProtocolError, UsageError
from starmux.local_api import (
    DECISIONS,
    MAX_BODY,
    MAX_LINE,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    BadRequest,
    check_body,
    check_key,
    check_title,
    encode,
)

F = TypeVar("F", bound=Callable[..., Any])
ENV_SESSION = "STARMUX_SESSION"
ENV_API = "STARMUX_API"
ENV_TOKEN = "STARMUX_SESSION_TOKEN"  # the session's own secret for the local API

EXIT_APPROVED = 0
EXIT_DENIED = 1
EXIT_EXPIRED = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_BAD_REPLY = 5
EXIT_USAGE = 64

MAX_REPLY = 1024 * 1024
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 30.0  # for answers that need no person: ping, cost
DECISION_GRACE = 30.0  # past the checkpoint's expiry, for the daemon to answer


class NotInSession(ConfigError):
    """``STARMUX_SESSION`` / ``STARMUX_API`` are missing: not run by a starmux session."""

    exit_code = EXIT_USAGE


class DaemonUnreachable(ConnectionLost):
    exit_code = EXIT_UNREACHABLE


class RequestRefused(UsageError):
    """The daemon answered ``ok: false``; message and hint are the daemon's."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, *, hint: str | None = None, code: str = "") -> None:
        super().__init__(message, hint=hint)
        self.code = code


class BadReply(RemoteProtocolError):
    exit_code = EXIT_BAD_REPLY


def printable(text: str) -> str:
    """Text from elsewhere (a controller's reason) is escaped before it reaches a terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# --- durations -----------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = r"\d{1,9}(?:\.\d{1,6})?"


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or plain seconds (``600``, ``2.5``)."""
    compact = text.strip().lower()
    if re.fullmatch(_NUMBER, compact):
        return float(compact)
    if not re.fullmatch(rf"(?:{_NUMBER}[smhd])+", compact):
        raise UsageError(
            f"{text!r} is not a duration", hint="write e.g. 90s, 10m, 2h, 1d, 1h30m or seconds"
        )
    return sum(float(n) * _UNITS[u] for n, u in re.findall(rf"({_NUMBER})([smhd])", compact))


def format_duration(seconds: float) -> str:
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit in ("d", "h", "m", "s"):
        amount, rest = divmod(rest, _UNITS[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def duration_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Click callback: a checkpoint timeout, from 1 second to 1 day."""
    try:
        seconds = parse_duration(value)
    except UsageError as exc:
        raise click.BadParameter(f"{exc.message} (write e.g. 90s, 10m, 2h, 1d)") from None
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        raise click.BadParameter(f"{value} is out of range: use 1s to 1d")
    return seconds


# --- the session and the blocking client ---------------------------------------------


@dataclass(frozen=True)
class AgentSession:
    session: str
    api: Path
    token: str = field(repr=False, default="")


def agent_session(environ: Mapping[str, str] = os.environ) -> AgentSession:
    """The session this process runs in, from the variables the daemon sets."""
    session, api = environ.get(ENV_SESSION, ""), environ.get(ENV_API, "")
    if not session or not api:
        missing = " and ".join(n for n, v in ((ENV_SESSION, session), (ENV_API, api)) if not v)
        raise NotInSession(
            f"not inside a starmux session ({missing} not set)",
            hint="run this from a command started by `starmux run`; the daemon sets "
            f"{ENV_SESSION} and {ENV_API} for it",
        )
    return AgentSession(session, Path(api), environ.get(ENV_TOKEN, ""))


class LocalApiClient:
    """Blocking client of the daemon's local API: one request, one answer, per connection."""

    def __init__(self, path: Path, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.path = path
        self.connect_timeout = connect_timeout

    def call(self, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send ``request``; return the ``ok: true`` answer or raise what went wrong."""
        line = encode(request)
        if len(line) - 1 > MAX_LINE:
            raise UsageError(
                f"the request is larger than the local API allows ({MAX_LINE} bytes)",
                hint="shorten the body (control characters count six bytes each)",
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            self._connect(sock)
            sock.settimeout(timeout)
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it hung up on us; its answer (if any) says why
            except OSError as exc:
                raise self._lost(f"cannot send to the daemon: {exc}") from exc
            return _check_reply(self._read_line(sock, timeout))

    def _connect(self, sock: socket.socket) -> None:
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(os.fspath(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            state = "no socket" if isinstance(exc, FileNotFoundError) else "nobody listening"
            raise DaemonUnreachable(
                f"the starmux daemon is not reachable ({state} at {self.path})",
                hint="is it running? check with `starmux daemon status`; "
                "start it with `starmux daemon start`",
            ) from exc
        except PermissionError as exc:
            raise DaemonUnreachable(
                f"no permission to use the starmux daemon's socket {self.path}",
                hint="run this as the user the daemon runs as",
            ) from exc
        except OSError as exc:
            raise DaemonUnreachable(
                f"cannot connect to the starmux daemon at {self.path}: {exc}"
            ) from exc

    def _read_line(self, sock: socket.socket, timeout: float) -> bytes:
        data = b""
        while b"\n" not in data:
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise self._lost(
                    f"no answer from the daemon within {format_duration(timeout)}"
                ) from exc
            except OSError as exc:
                raise self._lost(f"the connection to the daemon failed: {exc}") from exc
            if not chunk:
                raise self._lost("the daemon closed the connection before answering")
            data += chunk
            if len(data) > MAX_REPLY:
                raise BadReply("the daemon's answer is too large")
        return data.split(b"\n", 1)[0]

    def _lost(self, message: str) -> DaemonUnreachable:
        return DaemonUnreachable(
            message,
            hint="a checkpoint raised with --key stays pending while the daemon runs: "
            "run the same command with the same --key to pick it up again",
        )


def _check_reply(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BadReply("the daemon's answer is not JSON") from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise BadReply("the daemon's answer is not a protocol object")
    if not reply["ok"]:
        error, hint, code = reply.get("error"), reply.get("hint"), reply.get("code")
        raise RequestRefused(
            printable(error) if isinstance(error, str) and error else "the daemon refused",
            hint=printable(hint) if isinstance(hint, str) and hint else None,
            code=code if isinstance(code, str) else "",
        )
    return reply


@dataclass(frozen=True)
class Decision:
    checkpoint: str
    decision: str  # approved | denied | expired
    approved: bool  # the verdict in force: on expiry, the default that applied
    default_approve: bool
    reason: str
    decided_by: str

    @property
    def exit_code(self) -> int:
        return {"approved": EXIT_APPROVED, "denied": EXIT_DENIED}.get(self.decision, EXIT_EXPIRED)

    def as_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "decision": self.decision,
            "approved": self.approved,
            "default": "approve" if self.default_approve else "deny",
            "reason": self.reason,
            "decided_by": self.decided_by,
        }

    def describe(self) -> str:
        text = f"checkpoint {printable(self.checkpoint)}: {self.decision}"
        if self.decision == "expired":
            default = "approve" if self.default_approve else "deny"
            return f"{text}, nobody decided in time; default applied: {default}"
        if self.decided_by:
            text += f" by {printable(self.decided_by)}"
        return f"{text}: {printable(self.reason)}" if self.reason else text


def _decision(reply: dict[str, Any]) -> Decision:
    fields = ("checkpoint", "decision", "reason", "decided_by", "default")
    if not all(isinstance(reply.get(f), str) for f in fields) or not isinstance(
        reply.get("approved"), bool
    ):
        raise BadReply("the daemon's answer to a checkpoint lacks fields")
    decision, approved = reply["decision"], reply["approved"]
    if decision not in DECISIONS or reply["default"] not in ("deny", "approve"):
        raise BadReply(f"the daemon answered an unknown decision {decision[:40]!r}")
    if (decision == "approved" and not approved) or (decision == "denied" and approved):
        raise BadReply(f"the daemon's answer contradicts itself ({decision}, approved={approved})")
    return Decision(
        reply["checkpoint"],
        decision,
        approved,
        reply["default"] == "approve",
        reply["reason"],
        reply["decided_by"],
    )


def request_checkpoint(
    where: AgentSession,
    *,
    title: str,
    body: str,
    timeout: float,
    default_approve: bool,
    key: str | None,
    preview: dict[str, Any] | None = None,
) -> Decision:
    """Raise a checkpoint and block until it is decided or expires."""
    request: dict[str, Any] = {
        "op": "checkpoint",
        "session": where.session,
        "token": where.token,
        "title": title,
        "body": body,
        "timeout": timeout,
        "default": "approve" if default_approve else "deny",
    }
    if key is not None:
        request["key"] = key
    if preview is not None:
        request["preview"] = preview
    reply = LocalApiClient(where.api).call(request, timeout=timeout + DECISION_GRACE)
    return _decision(reply)


# --- the commands --------------------------------------------------------------------


class AgentUsageError(click.UsageError):
    exit_code = EXIT_USAGE


class AgentCommand(click.Command):
    """Usage errors exit 64: for ``checkpoint`` the statuses 1 and 2 are answers."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except AgentUsageError:
            raise
        except click.UsageError as exc:
            raise AgentUsageError(exc.format_message(), exc.ctx) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentUsageError:
            raise
        except click.UsageError as exc:
            raise AgentUsageError(exc.format_message(), exc.ctx) from exc


def _checked(check: Any, value: object, param_hint: str) -> Any:
    try:
        return check(value)
    except BadRequest as exc:
        raise click.BadParameter(exc.message, param_hint=param_hint) from None


def _finite(usd: float) -> float:
    if math.isnan(usd):  # FloatRange lets NaN through: every comparison with it is false
        raise click.BadParameter("must be a number", param_hint="--usd")
    return usd


def _read_body(body: str | None) -> str:
    if body != "-":
        return body or ""
    data = sys.stdin.buffer.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise click.BadParameter(
            f"the body on stdin is larger than {MAX_BODY} bytes", param_hint="--body"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter("the body on stdin is not UTF-8", param_hint="--body") from None


def _preview(command: str | None, diff: Any) -> dict[str, Any] | None:
    """``--command`` or ``--diff`` as a checkpoint preview (imported only when used:
    this command runs inside agents, where every millisecond of start-up counts)."""
    if command is not None and diff is not None:
        raise click.UsageError("give --command or --diff, not both")
    if command is None and diff is None:
        return None
    from starmux.checkpoint_preview import MAX_PREVIEW, PreviewKind, preview, to_json

    cwd = os.getcwd()
    if command is not None:
        made = preview(PreviewKind.COMMAND, tool="Bash", subject=command, cwd=cwd, text=command)
    else:
        text = diff.read(MAX_PREVIEW * 64)
        made = preview(PreviewKind.DIFF, tool="", subject="", cwd=cwd, text=text)
    return to_json(made)


def wait_options(*, timeout_help: str, default_help: str) -> Callable[[F], F]:
    """``--timeout DURATION`` and ``--default deny|approve``, shared by every command
    that raises a checkpoint (``starmux checkpoint``, the agent hooks)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--default",
            "default",
            type=click.Choice(["deny", "approve"]),
            default="deny",
            show_default=True,
            help=default_help,
        )(command)
        return click.option(
            "--timeout",
            default="10m",
            metavar="DURATION",
            callback=duration_option,
            show_default=True,
            help=timeout_help,
        )(command)

    return decorate


@click.command("checkpoint", cls=AgentCommand)
@click.argument("title")
@click.option(
    "--body", default=None, metavar="TEXT|-", help="Details for the approver; - reads stdin."
)
@wait_options(
    timeout_help="How long to wait for a decision: 90s, 10m, 2h, 1d or seconds.",
    default_help="What applies if nobody decides in time (the exit status is still 2).",
)
@click.option(
    "--key", default=None, help="Idempotency key: the same key joins the same checkpoint."
)
@click.option(
    "--command",
    "preview_command",
    default=None,
    metavar="CMD",
    help="Preview: the shell command this would run (approval rules match Bash(...)).",
)
@click.option(
    "--diff",
    "preview_diff",
    default=None,
    type=click.File("r", encoding="utf-8"),
    metavar="FILE|-",
    help="Preview: a unified diff of what this would change (- reads stdin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def checkpoint_command(
    title: str,
    body: str | None,
    timeout: float,
    default: str,
    key: str | None,
    preview_command: str | None,
    preview_diff: Any,
    as_json: bool,
) -> None:
    """Ask a controller to approve TITLE; block until decided.

    Exit status: 0 approved, 1 denied, 2 expired (the default applied; the output
    says which), 3 refused by the daemon, 4 daemon unreachable, 5 bad answer from
    the daemon, 64 usage error (or not inside a starmux session).
    """
    title = _checked(check_title, title, "TITLE")
    text = _checked(check_body, _read_body(body), "--body")
    key = _checked(check_key, key, "--key")
    decision = request_checkpoint(
        agent_session(),
        title=title,
        body=text,
        timeout=timeout,
        default_approve=default == "approve",
        key=key,
        preview=_preview(preview_command, preview_diff),
    )
    click.echo(json.dumps(decision.as_json()) if as_json else decision.describe())
    # The agent is blocked on us: hand control back the moment the decision is out.
    # A normal interpreter shutdown (module teardown, GC) costs 25-35 ms here, the
    # larger part of the whole approve-to-continue latency; nothing is left to clean
    # up (the socket is closed, output flushed), so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(decision.exit_code)


@click.command("cost", cls=AgentCommand)
@click.option("--input-tokens", type=click.IntRange(min=0), default=0, help="Input tokens used.")
@click.option("--output-tokens", type=click.IntRange(min=0), default=0, help="Output tokens used.")
@click.option(
    "--usd",
    type=click.FloatRange(min=0, max=1e9),
    default=0.0,
    callback=lambda ctx, param, value: _finite(value),
    help="Money spent, in US dollars.",
)
@click.option("--note", default="", help="What the cost was for (e.g. the model).")
def cost_command(input_tokens: int, output_tokens: int, usd: float, note: str) -> None:
    """Add a cost report (tokens, money) to this session's totals."""
    where = agent_session()
    LocalApiClient(where.api).call(
        {
            "op": "cost",
            "session": where.session,
            "token": where.token,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "usd": usd,
            "note": note,
        },
        timeout=REPLY_TIMEOUT,
    )
