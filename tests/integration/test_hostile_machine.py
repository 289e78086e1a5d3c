"""A compromised machine writes terminal escape sequences into every free-text field
it reports (issue 11 item 4): titles, status details, checkpoint titles and bodies,
command errors and hints (ids and statuses are refused by the decoder). The
controller's commands must print none of them raw.

The machine is our own core driven by the test (real relay, real KK channel, real
controller agent and CLI processes); it was paired at relay level and its card put in
the controller's store as pairing would. Like a real machine it takes the account's
device log (in clear before KK, then over the channel) with the core's own
verification and runs KK with the card the log gives the controller.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from starmux.checkpoint_preview import PreviewKind, preview
from starmux.client.store import ControllerStore
from starmux.control import CreateTicket, GrantMachine, MachineGranted, OpenTicket, TicketCreated
from starmux.device_log import DeviceLog, decode_entries
from starmux.device_messages import DeviceLogSync
from starmux.e2e import Kind, unwrap
from starmux.frames import FrameType
from starmux.home import load_node_keys
from starmux.identity import IdentityCard, Role
from starmux.live_channel import LiveChannel, respond
from starmux.messages import (
    APP,
    CheckpointRaised,
    CommandAck,
    CommandEnvelope,
    EventPage,
    LoggedEvent,
    Output,
    OutputStream,
    SessionCreated,
    SessionStatusChanged,
    SyncRequest,
)
from starmux.review_messages import ShowDiff
from starmux.session_state import Status

from .daemon_process import run_cli, starmux_command
from .node import RelayNode, ok
from .relay_process import RelayProcess

OSC52 = "\x1b]52;c;cHduZWQ=\x07"  # writes "pwned" to the clipboard
CSI = "\x1b[1A\x1b[2K"  # up one line, erase it
BIDI = "\u202e"
C1_CSI = "\x9b2J"  # the one-byte CSI of C1 controls: clear the screen
#: What a hostile machine answers ``starmux diff`` with (starmux/worktree_diff.py).
DIFF_RESULT = json.dumps(
    {
        "root": f"/srv{CSI}",
        "files": [
            {
                "path": f"evil{OSC52}.txt",
                "status": "untracked",
                "added": 1,
                "removed": 0,
                "binary": False,
            }
        ],
        "diff": f"+++ b/evil{OSC52}.txt\n+{CSI}{C1_CSI}boom\n",
        "full_size": 40,
        "truncated": False,
        "files_truncated": False,
    }
)
SESSION = "s-evil"
CHECKPOINT = "c-evil"


def events(now: float) -> list[LoggedEvent]:
    def event(seq: int, session: str, message: object) -> LoggedEvent:
        return LoggedEvent(seq, now, session, APP.encode(message))  # type: ignore[arg-type]

    return [
        event(1, SESSION, SessionCreated(("x",), "/", f"title{OSC52}{BIDI}", False, "k-1")),
        # Ids and statuses are refused by the decoder (they must match strict patterns
        # and enums); free text is what is left to a compromised machine.
        event(2, SESSION, SessionStatusChanged(Status.RUNNING, None, f"pid{CSI}")),
        event(3, SESSION, Output(OutputStream.STDOUT, b"plain output\n")),
        event(4, "s-wait", SessionCreated(("z",), "/", "waits", False, "k-2")),
        event(
            5,
            "s-wait",
            CheckpointRaised(
                CHECKPOINT,
                f"deploy{CSI}",
                f"line one\nline two{OSC52}",
                now + 3600,
                False,
                preview(
                    PreviewKind.DIFF,
                    tool=f"Edit{CSI}",
                    subject=f"/srv/app{OSC52}.py",
                    cwd=f"/srv{BIDI}",
                    text="--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n"
                    f"-x = 1\n+x = 2{OSC52}{C1_CSI}\n",
                ),
            ),
        ),
        event(6, SESSION, SessionStatusChanged(Status.FAILED, 3, f"why{OSC52}")),
    ]


async def hostile_machine(
    machine: RelayNode, account: bytes, paired: IdentityCard, relay_key: bytes, stop: asyncio.Event
) -> None:
    channel: LiveChannel | None = None
    devices: DeviceLog | None = None  # the account's device log, as a machine keeps it
    now = time.time()

    def take(entries: bytes) -> DeviceLog:
        offered = decode_entries(entries)
        return devices.update(offered) if devices else DeviceLog.verify(offered, account=account)

    while not stop.is_set():
        try:
            frame = await machine.recv(timeout=0.2)
        except TimeoutError:
            continue
        if frame.type is not FrameType.DATA:
            continue
        kind, payload = unwrap(frame.body)
        if kind is Kind.DEVICE_LOG:  # in clear, before KK (daemon/devices.py: offer)
            devices = take(payload)
        elif kind is Kind.SESSION_HANDSHAKE:
            # KK with the card the device log holds for the sender (as card_for does).
            device = devices.device(frame.peer) if devices is not None else None
            card = device.card if device is not None else paired
            channel, reply = respond(machine.keys, card, payload, relay_key=relay_key)
            await machine.send(FrameType.DATA, frame.peer, reply)
        elif kind is Kind.SESSION_TRANSPORT and channel is not None:
            message = channel.open(payload)
            if isinstance(message, DeviceLogSync):  # the controller's head, over KK
                devices = take(message.entries)
            elif isinstance(message, SyncRequest):
                page = EventPage(
                    "e1",
                    tuple(e for e in events(now) if e.seq > message.after_seq),
                    False,
                    False,
                )
                await machine.send(FrameType.DATA, frame.peer, channel.seal(page))
            elif isinstance(message, CommandEnvelope):
                ack = CommandAck(message.command_id, False, f"no{OSC52}", f"hint{CSI}", "")
                if isinstance(APP.decode(message.body), ShowDiff):
                    ack = CommandAck(message.command_id, True, "", "", DIFF_RESULT)
                await machine.send(FrameType.DATA, frame.peer, channel.seal(ack))
    # The controller did send its log, and the fake took it (the handshake's first step).
    assert devices is not None and devices.device(paired.sign_public) is not None


async def cli(home: Path, *args: str) -> tuple[int, bytes, bytes]:
    env = {**os.environ, "STARMUX_HOME": str(home), "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        *starmux_command(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out, err


@pytest.mark.timeout(120)
def test_machine_text_never_reaches_the_terminal_raw(tmp_path: Path, relay: RelayProcess) -> None:
    home = tmp_path / "controller"
    init = run_cli(home, "init", "--relay", relay.url, "--token", relay.registration_token or "")
    assert init.returncode == 0, init.stderr

    async def scenario() -> list[tuple[str, int, bytes, bytes]]:
        async with ControllerStore(home) as store:
            config = await store.config()
        keys = load_node_keys(home / "controller.key")
        controller = RelayNode(Role.CONTROLLER, config.name, keys=keys)
        await controller.connect(relay.url)
        machine = RelayNode(Role.MACHINE, "evil-box")  # cards refuse unprintable names
        await machine.connect(relay.url)
        ticket = ok(await machine.request(CreateTicket(1)))
        assert isinstance(ticket, TicketCreated)
        ok(await controller.request(OpenTicket(2, ticket.ticket)))
        now, card = time.time(), machine.card.encode()
        granted = ok(
            await controller.request(
                GrantMachine(
                    3, ticket.ticket, card, now, controller.grant(config.account, card, now)
                )
            )
        )
        assert isinstance(granted, MachineGranted)
        await controller.close()
        async with ControllerStore(home) as store:
            await store.add_machine(machine.card, paired_at=now)
        stop = asyncio.Event()
        serving = asyncio.create_task(
            hostile_machine(
                machine,
                config.account,
                keys.card(Role.CONTROLLER, config.name),
                config.relay_key,
                stop,
            )
        )
        results = []
        try:
            for args in (
                ("sessions",),
                ("approvals",),
                ("approvals", "show", CHECKPOINT),
                ("diff", SESSION),
                ("diff", SESSION, "--stat"),
                ("machines",),
                ("watch", SESSION),
                ("logs", SESSION),
                ("approve", CHECKPOINT),
                ("cancel", SESSION),
                ("outbox",),
            ):
                code, out, err = await cli(home, *args)
                results.append((" ".join(args), code, out, err))
        finally:
            stop.set()
            try:
                await (
                    serving
                )  # its failure (a log it refused, a message it could not read) fails the test
            finally:
                await machine.close()
        return results

    results = asyncio.run(scenario())
    seen = {command: (code, out, err) for command, code, out, err in results}
    for command, (_, out, err) in seen.items():
        for stream in (out, err):
            printed = stream.decode("utf-8", errors="replace")
            assert "\x1b" not in printed and "\x07" not in printed and BIDI not in printed, (
                command,
                printed,
            )
            assert "\x9b" not in printed, (command, printed)
    # The fields are shown, escaped, not dropped.
    assert b"title\\x1b]52;c;cHduZWQ=\\x07\\u202e" in seen["sessions"][1], seen
    assert b"\\x1b[1A" in seen["approvals"][1]
    # (the listing shows the preview, `approvals show` the body too)
    assert b"line one\n  line two\\x1b]52" in seen[f"approvals show {CHECKPOINT}"][1]
    assert seen[f"watch {SESSION}"][1] == b"plain output\n"
    assert b"[s-evil: failed (3): why\\x1b]52;c;cHduZWQ=\\x07]" in seen[f"watch {SESSION}"][2]
    assert seen[f"watch {SESSION}"][0] == 3  # the session's own exit code
    assert b"error: no\\x1b]52" in seen[f"approve {CHECKPOINT}"][2]
    assert b"hint: hint\\x1b[1A" in seen[f"approve {CHECKPOINT}"][2]
    # Previews and diffs (issue 19): shown, escaped.
    show = seen[f"approvals show {CHECKPOINT}"][1]
    assert b"+x = 2\\x1b]52;c;cHduZWQ=\\x07\\x9b2J" in show, show
    assert b"/srv/app\\x1b]52" in seen["approvals"][1]
    assert b"+\\x1b[1A\\x1b[2K\\x9b2Jboom" in seen[f"diff {SESSION}"][1], seen[f"diff {SESSION}"]
    assert b"evil\\x1b]52;c;cHduZWQ=\\x07.txt" in seen[f"diff {SESSION} --stat"][1]
