"""The README cannot drift: every command it shows exists with the flags it uses,
and is exercised by a test that runs it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from starmux.cli import cli

from ..timeouts import scaled

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

#: Every starmux command the README shows → test files that run it for real.
EXERCISED_BY: dict[str, list[str]] = {
    "demo": ["tests/integration/test_demo.py", "tests/integration/test_readme_commands.py"],
    "relay serve": ["tests/integration/relay_process.py"],
    "relay repin": ["tests/integration/test_rogue_relay.py"],
    "init": ["tests/integration/test_pairing.py"],
    "daemon start": ["tests/integration/daemon_process.py", "tests/integration/test_daemon_cli.py"],
    "daemon status": ["tests/integration/test_daemon_cli.py"],
    "daemon stop": ["tests/integration/test_daemon_cli.py"],
    "daemon install": ["tests/integration/test_daemon_cli.py"],
    "pair": ["tests/integration/test_pairing.py"],
    "machines": ["tests/integration/test_pairing.py"],
    "run": ["tests/integration/cluster.py"],
    "sessions": ["tests/integration/cluster.py"],
    "watch": ["tests/integration/watcher.py"],
    "logs": ["tests/integration/test_sessions.py"],
    "cancel": ["tests/integration/test_checkpoints.py"],
    "web": ["tests/browser/web_server.py"],
    "tasks": ["tests/integration/test_fleet.py"],
    "tasks show": ["tests/integration/test_fleet.py"],
    "machines tag": ["tests/integration/test_fleet.py"],
    "checkpoint": ["tests/integration/test_checkpoints.py"],
    "approvals": ["tests/integration/test_checkpoints.py", "tests/integration/test_review.py"],
    "approve": ["tests/integration/test_checkpoints.py", "tests/integration/test_review.py"],
    "deny": ["tests/integration/test_checkpoints.py", "tests/integration/test_review.py"],
    "rules": ["tests/integration/test_review.py"],
    "diff": ["tests/integration/test_review.py"],
    "cost": ["tests/unit/test_local_api.py"],
    "hook claude-pretooluse": ["tests/integration/test_checkpoints.py"],
    "revoke": ["tests/integration/test_pairing.py"],
    "doctor": ["tests/integration/test_doctor.py"],
    "devices": ["tests/integration/test_devices.py", "tests/integration/test_device_join.py"],
    "devices link": ["tests/integration/test_devices.py"],
    "devices add": ["tests/integration/test_device_join.py"],
    "devices role": ["tests/integration/test_devices.py"],
    "devices remove": ["tests/integration/test_devices.py"],
    "link": ["tests/integration/test_devices.py", "tests/integration/shown_codes.py"],
    "controller start": ["tests/integration/test_controller_agent.py"],
    "controller status": ["tests/integration/test_controller_agent.py"],
    "controller stop": ["tests/integration/test_controller_agent.py"],
    "controller install": ["tests/integration/test_controller_agent.py"],
    "outbox": ["tests/integration/test_controller_agent.py"],
    "machines rename": ["tests/integration/test_controller_agent.py"],
    "notify webhook": ["tests/integration/test_notify_webhooks.py"],
    "notify settings": ["tests/integration/test_notify_webhooks.py"],
    "notify test": ["tests/integration/test_notify_webhooks.py"],
    "notify list": ["tests/integration/test_notify_webhooks.py"],
    "notify remove": ["tests/integration/test_notify_webhooks.py"],
    "artifact add": ["tests/integration/test_artifacts.py"],
    "artifacts": ["tests/integration/test_artifacts.py"],
    "get": ["tests/integration/test_artifacts.py"],
}


def _shell_blocks() -> list[str]:
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", README, re.S)


def _starmux_lines() -> list[list[str]]:
    commands = []
    for block in _shell_blocks():
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words and words[0].endswith("starmux"):
                    commands.append(words[1:])
    # Commands quoted inline in the prose, e.g. `starmux daemon status`.
    commands.extend(shlex.split(inline)[1:] for inline in re.findall(r"`(starmux [^`]+)`", README))
    return commands


def _resolve(words: list[str]) -> tuple[str, click.Command, list[str]]:
    """The command path (e.g. 'daemon start'), its click command and the rest."""
    ctx = click.Context(cli)
    command: click.Command = cli
    path: list[str] = []
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"README shows unknown command: starmux {' '.join(words)}"
        path.append(rest.pop(0))
        command = sub
    return " ".join(path), command, rest


def test_readme_starts_with_the_two_commands() -> None:
    first_blocks = _shell_blocks()[:2]
    assert "starmux demo" in first_blocks[0]
    assert "pytest" in first_blocks[1]
    assert README.index("<!-- command: demo -->") < README.index("<!-- command: test -->")


def test_ci_runs_the_readme_test_command() -> None:
    assert "readme_command.py test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("words", _starmux_lines(), ids=lambda w: " ".join(w)[:60])
def test_every_readme_command_exists_with_its_flags(words: list[str]) -> None:
    path, command, rest = _resolve(words)
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    known |= {"--help", "-h"}
    for word in rest:
        if word == "--":
            break
        if word.startswith("-"):
            assert word.split("=")[0] in known, f"starmux {path} has no option {word}"


def test_every_readme_command_is_exercised_by_a_test() -> None:
    shown = {_resolve(words)[0] for words in _starmux_lines()}
    shown.discard("")  # bare `starmux --debug`-style mentions
    missing = shown - set(EXERCISED_BY)
    assert not missing, f"README commands with no test: {sorted(missing)}"
    for command, files in EXERCISED_BY.items():
        last = command.split()[-1]
        for name in files:
            text = (ROOT / name).read_text()
            assert f'"{last}"' in text or f"'{last}'" in text, f"{name} does not run {command}"


def test_shell_completion_is_documented_and_works() -> None:
    import os
    import subprocess
    import sys

    assert "_STARMUX_COMPLETE=bash_source starmux" in README
    env = {**os.environ, "_STARMUX_COMPLETE": "bash_source"}
    script = subprocess.run(
        [sys.executable, "-m", "starmux.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert "_starmux_completion" in script.stdout
    env = {
        **os.environ,
        "_STARMUX_COMPLETE": "bash_complete",
        "COMP_WORDS": "starmux dae",
        "COMP_CWORD": "1",
    }
    words = subprocess.run(
        [sys.executable, "-m", "starmux.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert "daemon" in words.stdout
