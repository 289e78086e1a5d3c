"""``starmux demo``: a relay, a daemon and a controller on this machine, for real.

Everything runs through the real parts: the relay and the daemon are separate
processes on a free port; the controller pairs by decoding the QR code the daemon
printed in its own output; the demo session raises a checkpoint through the
daemon's local API and waits for the person (or ``--yes``) to approve it. All
state lives in a temporary folder that is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starmux.errors import StarmuxError
from starmux.messages import (
    APP,
    CheckpointRaised,
    LoggedEvent,
    Output,
    SessionStatusChanged,
    StartSession,
)
from starmux.pairing_code import parse_pairing_code
from starmux.session_state import TERMINAL

from . import actions
from .cache import Cache
from .live import LiveController
from .qr_image import decode_pairing_code_from_image
from .qr_terminal import find_qr_block, terminal_qr_to_image
from .sessions import signed_decision
from .store import ControllerStore

STEP_TIMEOUT = 30.0

DEMO_AGENT = """\
import pathlib, subprocess, sys, time
print("demo agent: looking at the project", flush=True)
time.sleep(0.2)
print("demo agent: I would like to write result.txt", flush=True)
answer = subprocess.run([sys.executable, "-m", "starmux.cli", "checkpoint",
                         "Let the demo agent write result.txt?",
                         "--body", "It will write one line into its working folder.",
                         "--timeout", "10m"])
if answer.returncode == 0:
    pathlib.Path("result.txt").write_text("written after approval\\n")
    print("demo agent: approved, result.txt written", flush=True)
else:
    print("demo agent: not approved, nothing written", flush=True)
    sys.exit(1)
"""


class DemoFailed(StarmuxError):
    pass


@dataclass
class Process:
    """A child process whose stdout lines are collected as they come."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, name: str, *args: str) -> Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "starmux.cli",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        process = cls(name, proc)
        process.reader = asyncio.get_running_loop().create_task(process._read())
        return process

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))
            self.changed.set()
        self.changed.set()

    async def wait_for(self, ready: Callable[[str], object], what: str) -> object:
        """Wait until ``ready(all output so far)`` returns something truthy."""
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                result = ready("".join(self.lines))
                if result:
                    return result
                if self.proc.returncode is not None:
                    raise DemoFailed(
                        f"the {self.name} exited before {what}:\n" + "".join(self.lines[-20:])
                    )
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(BaseException):
                await self.reader


@dataclass
class DemoReport:
    relay_url: str = ""
    relay_fingerprint: str = ""
    machine: str = ""
    machine_fingerprint: str = ""
    comparison_code: str = ""
    session: str = ""
    status: str = ""
    checkpoint: str = ""
    decision: str = ""
    seconds: float = 0.0


Say = Callable[[str], None]
Ask = Callable[[str], bool]


async def run_demo(*, say: Say, ask: Ask, show_output: Say) -> DemoReport:
    report = DemoReport()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="starmux-demo-") as tmp:
        root = Path(tmp)
        processes: list[Process] = []
        try:
            await _demo(root, report, processes, say=say, ask=ask, show_output=show_output)
        finally:
            # Together, not one after the other: the relay's graceful shutdown waits
            # for its clients to leave, which the daemon is doing at the same time
            # (one by one, Ctrl-C took ~10 s).
            await asyncio.gather(*(process.stop() for process in processes))
    report.seconds = round(time.monotonic() - started, 2)
    return report


async def set_up_locally(
    root: Path, processes: list[Process], report: DemoReport, *, say: Say
) -> Path:
    """A relay and a daemon as processes under ``root``, a controller paired with the
    daemon through the QR code it printed. Returns the controller's home. Started
    processes are appended to ``processes`` (the caller stops them)."""
    say("1/5 starting a relay on a free port (embedded SQLite)…")
    relay = await Process.start(
        "relay",
        "relay",
        "serve",
        "--port",
        "0",
        "--json",
        "--data-dir",
        str(root / "relay"),
        "--log-level",
        "warning",
    )
    processes.append(relay)
    await relay.wait_for(lambda text: '"listening"' in text, "listening")
    events = [json.loads(line) for line in relay.lines if line.startswith("{")]
    started = next(e for e in events if e["event"] == "started")
    report.relay_url = next(e for e in events if e["event"] == "listening")["url"]
    report.relay_fingerprint = started["fingerprint"]
    say(f"    relay {report.relay_url}, fingerprint {report.relay_fingerprint}")

    say("2/5 creating the controller and registering it with the relay…")
    home = root / "controller"
    await actions.init(
        home,
        relay_url=report.relay_url,
        # The relay writes its one-time token to a 0600 file, never to stdout.
        token=(await asyncio.to_thread(Path(started["registration_token_file"]).read_text)).strip(),
        name="demo-controller",
    )

    say("3/5 starting a machine daemon; it prints a pairing QR code…")
    (root / "work").mkdir(exist_ok=True)
    daemon = await Process.start(
        "daemon",
        "daemon",
        "start",
        "--relay",
        report.relay_url,
        "--name",
        "demo-machine",
        "--home",
        str(root / "machine"),
        "--allow-root",
        str(root / "work"),
        "--print-code",  # the demo reads the QR from the daemon's piped output
    )
    processes.append(daemon)
    await daemon.wait_for(
        lambda text: "starmux://pair/v1?" in text and find_qr_block(text), "printing its QR code"
    )
    image = root / "qr.png"
    terminal_qr_to_image(find_qr_block("".join(daemon.lines))).save(image)
    code = parse_pairing_code(decode_pairing_code_from_image(image))
    say(f"    decoded the QR code from the daemon's output: machine {code.machine_fingerprint}")

    say("4/5 pairing (Noise XXpsk3 through the relay)…")
    paired = await actions.pair(home, code, confirm=lambda card, comparison: True)
    report.machine, report.machine_fingerprint = paired.machine.name, paired.machine.fingerprint
    report.comparison_code = paired.comparison_code
    await daemon.wait_for(
        lambda text: f"comparison code {paired.comparison_code}" in text, "confirming the pairing"
    )
    await daemon.wait_for(lambda text: "connected to" in text, "connecting as a paired machine")
    say(
        f"    paired with {report.machine}; both sides show comparison code "
        f"{report.comparison_code}"
    )
    return home


async def _demo(
    root: Path,
    report: DemoReport,
    processes: list[Process],
    *,
    say: Say,
    ask: Ask,
    show_output: Say,
) -> None:
    home = await set_up_locally(root, processes, report, say=say)
    say("5/5 running a demo agent session on the machine…")
    await _session(home, report, ask=ask, show_output=show_output, say=say)


async def _session(home: Path, report: DemoReport, *, ask: Ask, show_output: Say, say: Say) -> None:
    raised: asyncio.Queue[str] = asyncio.Queue()
    finished = asyncio.Event()

    def on_event(machine: bytes, event: LoggedEvent) -> None:
        if event.session != report.session:
            return
        message = APP.decode(event.body)
        if isinstance(message, Output):
            for line in message.data.decode(errors="replace").splitlines():
                if line.strip():
                    show_output(f"    │ {line}")
        elif isinstance(message, CheckpointRaised):
            raised.put_nowait(message.checkpoint)
        elif isinstance(message, SessionStatusChanged):
            report.status = message.status
            if message.status in TERMINAL:
                finished.set()

    async with ControllerStore(home) as store:
        config = await store.config()
        controller = LiveController(store, config, on_event=on_event)
        await controller.start()
        try:
            machine_key = next(iter(controller.machines))
            await controller.wait_live([machine_key])
            report.session = "s-demo" + str(int(time.time()))[-6:]
            start = StartSession(
                report.session,
                (sys.executable, "-c", DEMO_AGENT),
                _work_dir(home),
                "demo agent",
                {},
                False,
            )
            ack = await controller.submit(machine_key, start)
            if ack is None or not ack.ok:
                raise DemoFailed(
                    f"the machine did not start the session: {ack.error if ack else 'no answer'}"
                )
            async with asyncio.timeout(STEP_TIMEOUT):
                checkpoint_id = await raised.get()
            row = await Cache(store.db).checkpoint(checkpoint_id)
            assert row is not None
            report.checkpoint = row.title
            say(f"    checkpoint {checkpoint_id}: {row.title}")
            approve = await _ask_in_daemon_thread(ask, "    Approve it?")
            decision = signed_decision(store.keys(), row, approve=approve, reason="demo")
            ack = await controller.submit(machine_key, decision)
            report.decision = "approved" if approve else "denied"
            if ack is None or not ack.ok:
                raise DemoFailed(
                    f"the decision was not applied: {ack.error if ack else 'no answer'}"
                )
            async with asyncio.timeout(STEP_TIMEOUT):
                await finished.wait()
        finally:
            await controller.close()


async def _ask_in_daemon_thread(ask: Ask, question: str) -> bool:
    """Prompt without blocking the loop. A daemon thread, not the default executor:
    on Ctrl-C, asyncio.run waits for executor threads, and one blocked in input()
    would keep the demo (and its relay and daemon) alive until Enter is pressed."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()

    def prompt() -> None:
        try:
            result = ask(question)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, answer, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, answer, result, None)

    threading.Thread(target=prompt, daemon=True, name="demo-prompt").start()
    return await answer


def _settle(future: asyncio.Future[bool], result: bool | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(bool(result))


def _work_dir(home: Path) -> str:
    return str(home.parent / "work")


SEPARATE_MACHINES = """\
On separate machines the same steps are:
  relay host:  starmux relay serve --host 0.0.0.0 --data-dir ~/starmux-relay
               (prints its fingerprint and a one-time registration token)
  laptop:      starmux init --relay ws://RELAY:8765 --token TOKEN
  each box:    starmux daemon start --relay ws://RELAY:8765   (shows a QR code)
  laptop:      starmux pair --image qr.png        (or: starmux pair 'starmux://pair/v1?…')
  laptop:      starmux run --machine NAME -- COMMAND…
               starmux watch SESSION | starmux approvals | starmux approve ID
"""


def demo_command_impl(*, yes: bool, as_json: bool) -> int:
    import click

    def say(text: str) -> None:
        if not as_json:
            click.echo(text)

    def ask(question: str) -> bool:
        if yes:
            say(f"{question} yes (--yes)")
            return True
        return click.confirm(question, default=True)

    report = asyncio.run(run_demo(say=say, ask=ask, show_output=say))
    ok = report.status == "succeeded"
    if as_json:
        click.echo(json.dumps({"ok": ok, **report.__dict__}))
    else:
        click.echo("")
        headline = "everything worked" if ok else f"the session ended {report.status}"
        click.echo(f"starmux demo: {headline} in {report.seconds:.1f} s")
        click.echo(f"  relay     {report.relay_url}  (fingerprint {report.relay_fingerprint})")
        click.echo(
            f"  machine   {report.machine}  ({report.machine_fingerprint}), comparison "
            f"code {report.comparison_code}"
        )
        click.echo(
            f"  session   {report.session}: {report.status}; checkpoint "
            f"{report.decision}: {report.checkpoint}"
        )
        click.echo("  all demo state was in a temporary folder, now removed")
        click.echo("")
        click.echo(SEPARATE_MACHINES, nl=False)
    return 0 if ok else 1
