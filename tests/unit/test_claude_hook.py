"""``starmux hook claude-pretooluse``: recorded-shape payloads through the real hook.

Payloads in ``tests/data/claude/`` follow the PreToolUse input of Claude Code's hooks
reference. Each goes through the hook as a subprocess, against the local API server
and the decision-table handler of ``test_local_api``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from starmux.daemon.agent_commands import DECISION_GRACE
from starmux.daemon.claude_hook import (
    SETTINGS_SNIPPET,
    HookInputError,
    ToolCall,
    checkpoint_body,
    checkpoint_title,
    hook_output,
    parse_payload,
)
from starmux.local_api import MAX_BODY, MAX_TITLE, check_body, check_title

from .local_api_support import FINGERPRINT, Api, spawn, starmux

DATA = Path(__file__).parent.parent / "data" / "claude"
PAYLOADS = sorted(p.stem for p in DATA.glob("*.json"))
HOOK = ["hook", "claude-pretooluse"]

TITLES = {
    "bash": "Claude wants to run Bash: kubectl --context prod apply -f deploy/api.yaml …",
    "edit": "Claude wants to use Edit: /home/dev/shop/shop/settings.py",
    "webfetch": "Claude wants to use WebFetch: "
    "https://docs.djangoproject.com/en/5.0/howto/deployment/checklist/",
    "write": "Claude wants to use Write: /home/dev/shop/.github/workflows/release.yml",
}


def payload(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def decision(allow: bool, reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "allow" if allow else "deny",
            "permissionDecisionReason": reason,
        }
    }


def test_the_recorded_payloads_are_there() -> None:
    assert PAYLOADS == ["bash", "edit", "webfetch", "write"]
    for name in PAYLOADS:
        raw = json.loads(payload(name))
        assert raw["hook_event_name"] == "PreToolUse"
        assert set(raw) >= {"session_id", "transcript_path", "cwd", "tool_name", "tool_input"}


# --- each payload through the hook process ----------------------------------------------


@pytest.mark.parametrize("name", PAYLOADS)
async def test_approved_allows(api: Api, name: str) -> None:
    result = await starmux(HOOK, api.env(), payload(name))
    assert (result.code, result.err) == (0, "")
    assert result.json() == decision(
        True, f"Approved in starmux by {FINGERPRINT}: approved by the table"
    )
    raised = api.handler.checkpoints["c-1"]
    assert raised.title == TITLES[name]
    assert (raised.timeout, raised.default_approve) == (600.0, False)
    tool = json.loads(payload(name))
    assert raised.key == f"claude-{tool['tool_use_id']}"
    assert raised.body.startswith(f"Tool: {tool['tool_name']}\nWorking directory: /home/dev/shop\n")
    assert raised.body.endswith(json.dumps(tool["tool_input"], indent=2, ensure_ascii=False))


@pytest.mark.parametrize("name", PAYLOADS)
async def test_denied_denies(api: Api, name: str) -> None:
    api.handler.fallback = "denied"
    result = await starmux([*HOOK, "--timeout", "2m"], api.env(), payload(name))
    assert (result.code, result.err) == (0, "")
    assert result.json() == decision(
        False, f"Denied in starmux by {FINGERPRINT}: denied by the table"
    )
    assert api.handler.checkpoints["c-1"].timeout == 120.0


@pytest.mark.parametrize(("default", "allow"), [("deny", False), ("approve", True)])
async def test_expiry_applies_the_default(api: Api, default: str, allow: bool) -> None:
    api.handler.fallback = "expired"
    result = await starmux(
        [*HOOK, "--default", default, "--timeout", "90s"], api.env(), payload("bash")
    )
    assert result.code == 0
    verdict = "allowed" if allow else "denied"
    assert result.json() == decision(
        allow, f"No decision in starmux within 1m30s; {verdict} by default"
    )
    assert api.handler.checkpoints["c-1"].default_approve is allow


async def test_a_pending_decision_is_waited_for(api: Api) -> None:
    api.handler.fallback = "hold"
    process = await spawn(HOOK, api.env())
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(payload("write"))
    process.stdin.close()
    await api.handler.raised.wait()
    api.handler.decide("c-1", "denied", "not the release workflow, please")
    out = json.loads(await process.stdout.read())
    assert await process.wait() == 0
    assert out == decision(
        False, f"Denied in starmux by {FINGERPRINT}: not the release workflow, please"
    )


# --- failing closed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "why"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"hook_event_name": "PreToolUse", "tool_input": {}}', "no tool_name"),
        (b'{"tool_name": "Bash", "tool_input": "rm -rf /"}', "no tool_input object"),
        (
            b'{"hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_input": {}}',
            "handles PreToolUse, not 'PostToolUse'",
        ),
    ],
)
async def test_malformed_input_is_denied(api: Api, stdin: bytes, why: str) -> None:
    result = await starmux(HOOK, api.env(), stdin)
    assert result.code == 0
    reason = result.json()["hookSpecificOutput"]["permissionDecisionReason"]
    assert result.json() == decision(False, reason)
    assert why in reason and reason.endswith("denied to be safe")
    assert result.err == reason + "\n"
    assert api.handler.checkpoints == {}


async def test_an_unreachable_daemon_is_a_deny(home: Path, api: Api) -> None:
    result = await starmux(HOOK, api.env(STARMUX_API=str(home / "gone")), payload("bash"))
    assert result.code == 0
    reason = result.json()["hookSpecificOutput"]["permissionDecisionReason"]
    assert result.json() == decision(False, reason)
    assert reason.startswith(
        "starmux could not get a decision (the starmux daemon is not reachable"
    )
    assert result.err == reason + "\n"


async def test_a_refusal_is_a_deny(api: Api) -> None:
    result = await starmux(HOOK, api.env(STARMUX_SESSION="s-unknown"), payload("edit"))
    assert result.json() == decision(
        False,
        "starmux could not get a decision (no session s-unknown on this machine); "
        "denied to be safe",
    )


async def test_outside_a_session_it_has_no_opinion(api: Api) -> None:
    env = api.env()
    del env["STARMUX_SESSION"], env["STARMUX_API"]
    result = await starmux(HOOK, env, payload("bash"))
    assert (result.code, result.out) == (0, "")
    assert "not inside a starmux session; no opinion" in result.err
    assert api.handler.checkpoints == {}


@pytest.mark.parametrize("missing", ["STARMUX_SESSION", "STARMUX_API"])
async def test_half_a_session_is_a_deny(api: Api, missing: str) -> None:
    env = api.env()
    del env[missing]
    result = await starmux(HOOK, env, payload("bash"))
    assert result.json() == decision(
        False, f"starmux: not inside a starmux session ({missing} not set); denied to be safe"
    )


async def test_tools_filter(api: Api) -> None:
    skipped = await starmux([*HOOK, "--tools", "Bash|Write|Edit"], api.env(), payload("webfetch"))
    assert (skipped.code, skipped.out, skipped.err) == (0, "", "")
    partial = await starmux([*HOOK, "--tools", "Bas"], api.env(), payload("bash"))
    assert (partial.code, partial.out) == (0, "")  # the whole name must match
    assert api.handler.checkpoints == {}
    asked = await starmux([*HOOK, "--tools", "Bash|Write|Edit"], api.env(), payload("bash"))
    assert asked.json()["hookSpecificOutput"]["permissionDecision"] == "allow"
    assert list(api.handler.checkpoints) == ["c-1"]


async def test_a_bad_option_blocks_the_call(api: Api) -> None:
    # Exit 2 is Claude Code's "blocking error" for PreToolUse: the call does not run.
    result = await starmux([*HOOK, "--tools", "Bash("], api.env(), payload("bash"))
    assert result.code == 2
    assert "not a regular expression" in result.err
    assert api.handler.checkpoints == {}


# --- the pieces, without processes ------------------------------------------------------


def call(tool_name: str, **tool_input: Any) -> ToolCall:
    return ToolCall(tool_name, tool_input, "sess", "/work", "default", "toolu_1")


def test_titles_are_one_line_and_capped() -> None:
    title = checkpoint_title(call("Bash", command="echo " + "x" * 500 + "\nrm -rf build"))
    assert len(title) == MAX_TITLE and title.endswith("…")
    assert check_title(title) == title
    forged = checkpoint_title(call("Bash\u202e\x1b[2J", command="ls\u2028\x00 -l"))
    assert check_title(forged) == forged
    assert forged == "Claude wants to use Bash  [2J: ls …"  # U+2028 ends a line
    assert checkpoint_title(call("mcp__github__merge", number=7)) == (
        "Claude wants to use mcp__github__merge"
    )


def test_the_body_is_cut_to_the_limit() -> None:
    body = checkpoint_body(call("Write", file_path="/x", content="é" * MAX_BODY))
    assert len(body.encode()) <= MAX_BODY
    assert check_body(body) == body
    assert re.search(r"\n… \(truncated: \d+ bytes in all\)$", body)


def test_parse_payload_keeps_what_it_needs() -> None:
    parsed = parse_payload(payload("bash"))
    assert parsed.tool_name == "Bash"
    assert parsed.tool_input["timeout"] == 120000
    assert (parsed.cwd, parsed.permission_mode) == ("/home/dev/shop", "default")
    with pytest.raises(HookInputError, match="larger than"):
        parse_payload(b" " * (16 * 1024 * 1024 + 1))


def test_hook_output_schema() -> None:
    assert hook_output(True, "ok") == decision(True, "ok")
    assert hook_output(False, "no") == decision(False, "no")


def test_settings_snippet() -> None:
    settings = json.loads(SETTINGS_SNIPPET)
    (entry,) = settings["hooks"]["PreToolUse"]
    for tool in ("Bash", "Write", "Edit", "WebFetch"):
        assert re.fullmatch(entry["matcher"], tool)
    (hook,) = entry["hooks"]
    assert hook["type"] == "command"
    assert hook["command"].startswith("starmux hook claude-pretooluse ")
    # Claude Code kills a hook at its timeout and then lets the call proceed:
    # the hook's own wait must end first.
    wait = re.search(r"--timeout (\d+)m", hook["command"])
    assert wait is not None and hook["timeout"] > int(wait.group(1)) * 60 + DECISION_GRACE
