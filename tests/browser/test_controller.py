"""The browser as a controller device, against a real relay, real daemons and a
CLI owner: link by code, pair a machine from a QR image, watch live output across
a relay restart, approve a checkpoint of a real agent, see a CLI device's decision
arrive as "too late", revoke a machine. The page logs no console error throughout
(the ``page`` fixture's teardown).

Figures (printed with -s): seconds from picking a machine's QR image to the machine
being listed, and from tapping Approve to the agent's process continuing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from starmux.client.qr_terminal import find_qr_block, terminal_qr_to_image

from ..integration.cluster import Paired
from ..integration.daemon_process import DaemonProcess, run_cli
from ..integration.relay_process import RelayProcess
from ..integration.shown_codes import Inviter
from ..integration.test_checkpoints import agent
from ..integration.watcher import Watcher
from ..timeouts import poll, scaled
from .conftest import ConsoleRecord, wait_for_keys

pytestmark = pytest.mark.timeout(300)


def link_browser(page: Page, paired: Paired, role: str = "owner") -> None:
    """A fresh profile becomes a device of the CLI owner's account by pasting the code."""
    inviter = Inviter(paired.controller, role)
    code = inviter.wait_code()
    page.goto(paired.relay.http_url + "/app/")
    wait_for_keys(page, "unlocked")
    page.fill("#device-name", "phone")
    page.fill("textarea", code)
    page.click("text=Use this code")
    expect(page.locator("#comparison-code")).to_have_text(re.compile(r"\d"))
    shown = page.text_content("#comparison-code") or ""
    page.click("#codes-match")
    said = inviter.finish() + "".join(inviter.err)
    assert shown in said, (shown, said)  # the CLI owner showed the same code
    expect(page.locator("#connection")).to_have_text("live")


def machine_card(page: Page, name: str) -> Locator:
    return page.locator("#machine-list li", has_text=name)


def held(gate: Path) -> bool | None:
    """True once the session's counter waits at ``gate``; None (poll on) before."""
    return Path(f"{gate}.held").exists() or None


def test_link_pair_watch_approve_revoke(
    page: Page,
    paired: Paired,
    daemons: list[DaemonProcess],
    relays: list[RelayProcess],
    tmp_path: Path,
    console: ConsoleRecord,
    capsys: pytest.CaptureFixture[str],
) -> None:
    link_browser(page, paired)
    expect(machine_card(page, "gpu-box")).to_contain_text("online")
    devices = run_cli(paired.controller, "devices", "--json")
    assert "phone" in devices.stdout

    # --- pair a second machine from a picture of its QR (the upload path) -------------
    second = DaemonProcess(
        tmp_path / "build-box", paired.relay.url, name="build-box",
        extra_args=["--allow-root", str(tmp_path)],
    ).start()  # fmt: skip
    daemons.append(second)
    second.pairing_code()
    image = tmp_path / "build-box-qr.png"
    terminal_qr_to_image(find_qr_block(second.output)).save(image)
    page.click("#pair-button")
    picked = time.monotonic()
    page.set_input_files("#pair-panel input[type=file]", str(image))
    expect(page.locator("#comparison-code")).to_have_text(re.compile(r"\d"))
    page.click("#codes-match")
    expect(machine_card(page, "build-box")).to_contain_text("online")
    pair_seconds = time.monotonic() - picked
    second.wait_for("connected to")

    # --- start a session from the browser; watch it live through a relay restart -------
    # The session counts to 400: 1-20 before the outage, 21-350 while the relay is
    # away, 351-400 live after its restart. In its working directory it holds before 21
    # until the test makes "relay-down" and before 351 until "relay-back" (announcing
    # each hold with a ".held" file), so the phases do not hang on the machine's speed
    # and no count is sat out in real time. Lines the page gets live come 20 ms apart;
    # those printed in the outage 1 ms apart (they come back in one resync).
    lines, down, back = 400, paired.workdir / "relay-down", paired.workdir / "relay-back"
    page.click("#tabs >> text=Start")
    page.select_option("#start-machine", label="gpu-box")
    page.fill("#start-cwd", str(paired.workdir))
    counter = (
        "import os, time;"
        ' hold = lambda gate: (open(gate + ".held", "w").close(),'
        " [time.sleep(0.01) for _ in iter(lambda: os.path.exists(gate), True)]);"
        f' gates = {{21: "{down.name}", 351: "{back.name}"}};'
        " [(i in gates and hold(gates[i]), print(i, flush=True),"
        " time.sleep(0.001 if 21 <= i <= 350 else 0.02))"
        f" for i in range(1, {lines + 1})]"
    )
    page.fill("#start-command", f"python3 -c '{counter}'")
    page.fill("#start-title", "count")
    page.click("#start-button")
    expect(page.locator("#start-status")).to_have_text("Started.")
    page.click("#tabs >> text=Sessions")
    page.locator("#session-list li", has_text="count").get_by_role("button", name="Watch").click()
    page.click("#show-text")
    expect(page.locator("#output-text")).to_contain_text("\n20\n")
    console.allow_refused_connections()
    paired.relay.kill()
    expect(page.locator("#connection")).to_contain_text("offline since")
    down.touch()  # 21 to 350 are printed while the relay is away
    poll(lambda: held(back), within=20, what="the session printing up to 350")
    paired.relay = RelayProcess(paired.relay.data_dir, port=paired.relay.port).start()
    relays.append(paired.relay)
    expect(page.locator("#connection")).to_have_text("live", timeout=scaled(30) * 1000)
    # What was printed in the outage arrives after the restart, before anything new.
    expect(page.locator("#output-text")).to_contain_text("\n350\n")
    back.touch()  # 351 to 400 are printed live
    expect(page.locator("#session-meta")).to_contain_text("succeeded", timeout=scaled(60) * 1000)
    text = page.text_content("#output-text") or ""
    assert text == "".join(f"{i}\n" for i in range(1, lines + 1))  # no gap, no repeat
    # Reloaded with the relay away, the app shows what this device kept (output up to
    # its saved cursor); when the relay is back it syncs on after that cursor: the
    # whole output again, nothing repeated, nothing missing.
    paired.relay.kill()
    page.reload()
    wait_for_keys(page, "unlocked")
    expect(page.locator("#connection")).to_contain_text("offline since")
    page.click("#tabs >> text=Sessions")
    page.locator("#session-list li", has_text="count").get_by_role("button", name="Watch").click()
    page.click("#show-text")
    expect(page.locator("#output-text")).to_contain_text("\n20\n")
    kept = page.text_content("#output-text") or ""
    assert text.startswith(kept)  # a snapshot as of some cursor (the newest save may lag)
    paired.relay = RelayProcess(paired.relay.data_dir, port=paired.relay.port).start()
    relays.append(paired.relay)
    expect(page.locator("#connection")).to_have_text("live", timeout=scaled(30) * 1000)
    page.click("#tabs >> text=Machines")
    synced = machine_card(page, "gpu-box").locator(".meta").first
    expect(synced).to_have_text("online · 0 running", timeout=scaled(30) * 1000)
    page.click("#tabs >> text=Sessions")
    page.locator("#session-list li", has_text="count").get_by_role("button", name="Watch").click()
    page.click("#show-text")
    assert page.text_content("#output-text") == text

    # --- approve a checkpoint raised by a real agent process ----------------------------
    session = paired.run(*agent("Deploy to prod?", "--timeout", "120"))
    page.click("#tabs >> text=Approvals")
    item = page.locator("#approval-list li", has_text="Deploy to prod?")
    expect(item.get_by_role("button", name="Approve")).to_be_visible()
    watcher = Watcher(paired.controller, session)
    clicked = time.monotonic()
    item.get_by_role("button", name="Approve").click()
    expect(item).to_contain_text("Approved by you")
    assert watcher.finish() == 0
    continued = time.monotonic() - clicked  # the agent's process ran on and ended
    report = b"".join(watcher.lines).decode()
    assert report.startswith("exit 0 ") and '"approved"' in report
    ack_ms = float((page.text_content("#ack-time") or "").split(" in ")[1].split(" ms")[0])

    # --- a CLI device answers first: the browser shows it as too late ------------------
    session = paired.run(*agent("Rotate the keys?", "--timeout", "120"))
    item = page.locator("#approval-list li", has_text="Rotate the keys?")
    expect(item.get_by_role("button", name="Deny")).to_be_visible()
    rows = paired.json("approvals")
    assert isinstance(rows, list)
    pending = [r for r in rows if r["title"] == "Rotate the keys?"]
    assert run_cli(paired.controller, "deny", str(pending[0]["id"])).returncode == 0
    expect(item).to_contain_text("Too late: decided by laptop (denied)")
    assert Watcher(paired.controller, session).finish() == 1

    # --- revoke the second machine (owner only) ------------------------------------------
    page.click("#tabs >> text=Machines")
    page.once("dialog", lambda dialog: dialog.accept())
    machine_card(page, "build-box").get_by_role("button", name="Revoke").click()
    expect(machine_card(page, "build-box")).to_have_count(0)
    second.wait_for("REVOKED")  # the machine verified the browser's signed revocation
    listed = paired.json("machines")
    assert isinstance(listed, list) and [m["name"] for m in listed] == ["gpu-box"]

    with capsys.disabled():
        print(
            f"\nbrowser figures: QR image picked -> machine listed {pair_seconds:.2f} s; "
            f"Approve tapped -> agent continued and exited {continued:.2f} s; "
            f"Approve -> machine's ack {ack_ms:.0f} ms"
        )


def test_an_owner_removes_a_device(page: Page, paired: Paired, tmp_path: Path) -> None:
    link_browser(page, paired, role="owner")
    tablet = tmp_path / "tablet"
    inviter = Inviter(paired.controller, "operator")
    joined = run_cli(tablet, "link", inviter.wait_code(), "--name", "tablet", "--yes")
    assert joined.returncode == 0, joined.stderr
    inviter.finish()

    page.click("#tabs >> text=Devices")
    device = page.locator("#device-list li", has_text="tablet")
    expect(device).to_contain_text("operator")  # learnt from the relay's devices-changed
    page.once("dialog", lambda dialog: dialog.accept())
    device.get_by_role("button", name="Remove").click()
    expect(device).to_have_count(0)
    told = run_cli(tablet, "machines")  # the relay refuses the removed device
    assert "this device was removed from its account" in told.stderr, told.stderr


def test_an_operator_sees_no_owner_actions(page: Page, paired: Paired) -> None:
    link_browser(page, paired, role="operator")
    expect(machine_card(page, "gpu-box")).to_contain_text("online")
    expect(machine_card(page, "gpu-box").get_by_role("button", name="Revoke")).to_have_count(0)
    page.click("#tabs >> text=Devices")
    expect(page.locator("#device-list")).to_contain_text("laptop")
    expect(page.locator("#device-list").get_by_role("button", name="Remove")).to_have_count(0)
