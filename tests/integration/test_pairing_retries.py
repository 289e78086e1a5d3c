"""The unpaired daemon's pairing offer against a hostile or busy relay: real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
from pathlib import Path

from starmux.control import CreateTicket, Failure
from starmux.identity import Role
from starmux.pairing_code import parse_pairing_code

from .conftest import RelayFactory
from .daemon_process import CODE_PATTERN, DaemonProcess, run_cli, starmux_command
from .node import RelayNode
from .relay_process import RelayProcess


async def _spend_ticket_budget(relay: RelayProcess) -> None:
    """Another key on the daemon's address spends the per-address pairing budget."""
    spender = RelayNode(Role.MACHINE)
    await spender.connect(relay.url)
    for request_id in range(1, 100):
        reply = await spender.request(CreateTicket(request_id))
        if isinstance(reply, Failure):
            assert reply.code == "rate-limited"
            break
    await spender.close()


def test_rate_limited_ticket_request_is_retried_not_fatal(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    # A small per-address budget, spent by another key on the same address.
    # The relay's clock is moved by the test: its window is a minute, not waited out.
    relay = relay_factory(
        env={"STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE_PER_IP": "3"}, fake_clock=True
    )
    asyncio.run(_spend_ticket_budget(relay))
    daemon = DaemonProcess(tmp_path / "box", relay.url).start()
    daemons.append(daemon)
    daemon.wait_for("too many pairing requests.*retrying in", timeout=30)
    assert not re.search(CODE_PATTERN, "".join(daemon.output))  # the budget is spent
    relay.advance_clock(60.0)  # the minute passes: the budget is back
    # The daemon keeps retrying (it did not exit) and then offers a code.
    daemon.wait_for(CODE_PATTERN, timeout=60)  # fails at once if the daemon exits


def _controller(tmp_path: Path, relay: RelayProcess) -> Path:
    home = tmp_path / "controller"
    token = relay.registration_token or ""
    result = run_cli(home, "init", "--relay", relay.url, "--token", token, "--name", "laptop")
    assert result.returncode == 0, result.stderr
    return home


def _with_secret(code: str, secret: bytes) -> str:
    parsed = parse_pairing_code(code)
    return dataclasses.replace(parsed, secret=secret).to_text()


def test_a_code_burns_after_three_wrong_tries_and_a_fresh_one_follows_at_once(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    daemon = DaemonProcess(tmp_path / "box", relay.url).start()
    daemons.append(daemon)
    code = daemon.pairing_code()
    for attempt in (1, 2, 3):
        wrong = run_cli(controller, "pair", _with_secret(code, bytes([attempt]) * 32), "--yes")
        assert wrong.returncode == 2
        # Each try reaches the machine (the code was not burnt by double counting).
        assert "the code is wrong or stale" in wrong.stderr, (attempt, wrong.stderr)
    daemon.wait_for("blocked after too many failed attempts; here is a new one", timeout=10)
    fresh = daemon.pairing_code(after=daemon.output.index(code) + len(code))
    assert fresh != code
    burnt = run_cli(controller, "pair", code, "--yes")
    assert burnt.returncode == 2 and "use the newest code the daemon shows" in burnt.stderr
    assert run_cli(controller, "pair", fresh, "--yes").returncode == 0


def test_an_expired_code_is_reported_as_expired(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory(env={"STARMUX_RELAY_TICKET_TTL": "2"})
    controller = _controller(tmp_path, relay)
    daemon = DaemonProcess(tmp_path / "box", relay.url).start()
    daemons.append(daemon)
    code = daemon.pairing_code()
    mark = daemon.output.index(code) + len(code)
    daemon.pairing_code(after=mark)  # the daemon replaced it: the relay forgot the old one
    late = run_cli(controller, "pair", code, "--yes")
    assert late.returncode == 2
    assert "this pairing code has expired" in late.stderr, late.stderr


def test_ctrl_c_at_the_prompt_ends_at_once_and_the_code_stays_usable(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    daemon = DaemonProcess(tmp_path / "box", relay.url).start()
    daemons.append(daemon)
    code = daemon.pairing_code()
    pair = subprocess.Popen(
        starmux_command("pair", code),
        stdin=subprocess.PIPE,  # open and silent: a person who has not answered yet
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STARMUX_HOME": str(controller), "NO_COLOR": "1"},
    )
    assert pair.stdout is not None
    seen = b""
    while b"Do the codes match?" not in seen:
        chunk = os.read(pair.stdout.fileno(), 4096)
        assert chunk, f"pair ended before its prompt: {seen!r}"
        seen += chunk
    pair.send_signal(signal.SIGINT)
    try:
        returncode = pair.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pair.kill()
        raise AssertionError("Ctrl-C at the prompt did not end `pair`") from None
    stderr = pair.stderr.read().decode() if pair.stderr else ""
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "ConnectionLost" not in stderr, stderr
    daemon.wait_for("the controller cancelled; the code stays valid", timeout=10)
    again = run_cli(controller, "pair", code, "--yes")
    assert again.returncode == 0, again.stderr


def test_daemon_confirm_accepts_only_after_its_person_says_yes(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    controller = _controller(tmp_path, relay)
    daemon = DaemonProcess(
        tmp_path / "box", relay.url, extra_args=["--confirm"], with_stdin=True
    ).start()
    daemons.append(daemon)
    env = {**os.environ, "STARMUX_HOME": str(controller), "NO_COLOR": "1"}
    code = daemon.pairing_code()  # one refusal leaves it usable

    def pair_in_background() -> subprocess.Popen[str]:
        return subprocess.Popen(
            starmux_command("pair", code, "--yes"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    # The person at the machine says no: nothing is paired, the controller is told.
    refused = pair_in_background()
    question = daemon.wait_for(r"show the comparison code (\d{3}-\d{3})\?")
    assert refused.poll() is None  # the controller waits for the machine's person
    daemon.answer("n")
    _, stderr = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "refused the pairing" in stderr, stderr
    assert "paired by controller" not in daemon.output
    # Then yes: paired, and both showed the same comparison code.
    mark = question.end()
    accepted = pair_in_background()
    question = daemon.wait_for(r"show the comparison code (\d{3}-\d{3})\?", after=mark)
    daemon.answer("y")
    stdout, stderr = accepted.communicate(timeout=30)
    assert accepted.returncode == 0, stderr
    assert f"comparison code: {question.group(1)}" in stdout
    daemon.wait_for("paired by controller", after=mark)
