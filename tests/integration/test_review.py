"""Review before approval (issue 19) through every real part: a Claude Code PreToolUse
hook in a real session → the daemon's local API → relay → controller agent → CLI.

- an ``Edit`` payload becomes a checkpoint whose preview is the exact unified diff,
  printed escaped (and coloured only by us) on a real pseudo-terminal;
- ``approve --for-session`` lets the next matching checkpoint pass without a person,
  a deny rule stops the one after (deny wins over the allow), the audit rows name
  rule and device, and ``rules`` lists and removes them;
- ``starmux diff`` of a git repository with a modified and an untracked file.
"""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from starmux.home import load_node_keys

from ..timeouts import poll, scaled
from .cluster import Paired, pair, python
from .daemon_process import DaemonProcess, run_cli, starmux_command
from .relay_process import RelayProcess
from .watcher import Watcher

DATA = Path(__file__).resolve().parent.parent / "data" / "claude"
TITLE_ESCAPE = "\x1b]0;pwned\x07"  # would retitle the controller's terminal


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def hook_session(payloads: Path) -> list[str]:
    """A session that runs Claude Code's PreToolUse hook once per payload, in order,
    and prints each decision (one JSON line each)."""
    return python(
        "import json, subprocess, sys, time\n"
        f"for payload in json.load(open({str(payloads)!r})):\n"
        "    started = time.monotonic()\n"
        "    r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'hook',"
        " 'claude-pretooluse', '--timeout', '5m'], input=json.dumps(payload),"
        " capture_output=True, text=True)\n"
        "    ms = (time.monotonic() - started) * 1000\n"
        "    print(json.dumps({'ms': ms, 'decision': json.loads(r.stdout)}), flush=True)\n"
    )


def edit(path: Path, old: str, new: str, number: int) -> dict[str, object]:
    payload: dict[str, object] = json.loads((DATA / "edit.json").read_text())
    payload.update(cwd=str(path.parent), tool_use_id=f"toolu_review_{number}")
    payload["tool_input"] = {"file_path": str(path), "old_string": old, "new_string": new}
    return payload


def pending(paired: Paired, ending: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        rows: list[dict[str, object]] = json.loads(paired.cli("approvals", "--json"))
        return next((r for r in rows if str(r["title"]).endswith(ending)), None)

    return poll(find, within=30, what=f"a checkpoint about {ending}")


def on_a_terminal(home: Path, *args: str) -> bytes:
    """What ``starmux ARGS`` writes to a real pseudo-terminal (colour on)."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(STARMUX_HOME=str(home), TERM="xterm-256color")
    process = subprocess.Popen(
        starmux_command(*args), stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=scaled(60)) == 0, output
    return output


def audit(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "daemon.sqlite3") as db:
        return list(db.execute("SELECT event, detail FROM audit ORDER BY id"))


def test_edit_preview_scopes_and_rules(paired: Paired) -> None:
    work = paired.workdir.resolve()
    settings, secrets = work / "settings.py", work / "secrets.py"
    settings.write_text(f"import os\n# {TITLE_ESCAPE} title\nDEBUG = True\nNAME = 'shop'\n")
    secrets.write_text("KEY = 1\n")
    payloads = work / "payloads.json"
    payloads.write_text(
        json.dumps(
            [
                edit(settings, "DEBUG = True", "DEBUG = False", 1),  # a person approves
                edit(settings, "NAME = 'shop'", "NAME = 'store'", 2),  # the allow rule
                edit(secrets, "KEY = 1", "KEY = 2", 3),  # a person denies, sets a deny rule
                edit(settings, "DEBUG = True", "DEBUG = 0", 4),  # the deny rule wins
            ]
        )
    )
    session = paired.run(*hook_session(payloads), title="claude")

    first = pending(paired, "settings.py")
    preview = first["preview"]
    assert isinstance(preview, dict) and preview["type"] == "diff" and preview["tool"] == "Edit"
    assert preview["text"] == (
        f"--- a{settings}\n"
        f"+++ b{settings}\n"
        "@@ -1,4 +1,4 @@\n"
        " import os\n"
        f" # {TITLE_ESCAPE} title\n"
        "-DEBUG = True\n"
        "+DEBUG = False\n"
        " NAME = 'shop'\n"
    )
    assert preview["truncated"] is False

    # On a terminal: the machine's escape is shown escaped; the only escape sequences
    # written are our own colours (SGR), and the diff is coloured.
    shown = on_a_terminal(paired.controller, "approvals", "show", str(first["id"]))
    assert b"\x1b]0;" not in shown and b"\x07" not in shown
    assert b"# \\x1b]0;pwned\\x07 title" in shown
    assert set(re.findall(rb"\x1b[^m]*m", shown)) <= {
        b"\x1b[0m",
        b"\x1b[1m",
        b"\x1b[31m",
        b"\x1b[32m",
        b"\x1b[36m",
    }, shown
    assert not re.search(rb"\x1b(?!\[[0-9;]*m)", shown), shown
    assert b"\x1b[32m+DEBUG = False" in shown and b"\x1b[31m-DEBUG = True" in shown
    listing = paired.cli("approvals")
    assert f"edit {settings} (+1 -1)" in listing

    approved = paired.json("approve", str(first["id"]), "--for-session")
    assert isinstance(approved, dict) and approved["ok"] is True, approved
    allow = approved["rule"]
    assert allow["pattern"] == "Edit(settings.py)" and allow["effect"] == "allow"

    third = pending(paired, "secrets.py")  # the second one passed without anyone
    denied = paired.json("deny", str(third["id"]), "--for-session", "--rule", "Edit(*.py)")
    assert isinstance(denied, dict) and denied["ok"] is True, denied
    deny = denied["rule"]

    watcher = Watcher(paired.controller, session)
    assert watcher.finish() == 0
    calls = [json.loads(line) for line in watcher.lines if line.strip()]
    decisions = [call["decision"]["hookSpecificOutput"] for call in calls]
    assert [d["permissionDecision"] for d in decisions] == ["allow", "allow", "deny", "deny"]
    me = load_node_keys(paired.controller / "controller.key").fingerprint
    device = f"laptop ({me})"  # the rule's device, by its name in the device log
    assert (
        f"allowed by rule {allow['id']} Edit(settings.py) set by {device}"
        in (decisions[1]["permissionDecisionReason"])
    )
    assert (
        f"denied by rule {deny['id']} Edit(*.py) set by {device}"
        in (decisions[3]["permissionDecisionReason"])
    )

    # Measured: a hook call a rule answers, from starting the hook process to its
    # decision (Python start-up, diff, local API and the daemon's rule check).
    print(
        f"\nhook call answered by a rule: {calls[1]['ms']:.0f} ms (allow), "
        f"{calls[3]['ms']:.0f} ms (deny)"
    )

    rows = audit(paired.daemon.home)
    assert any(
        event == "checkpoint.approved"
        and f"allowed by rule {allow['id']}" in detail
        and f"set by {device}" in detail
        for event, detail in rows
    ), rows
    assert any(
        event == "checkpoint.denied"
        and f"denied by rule {deny['id']} Edit(*.py)" in detail
        and f"set by {device}" in detail
        for event, detail in rows
    ), rows

    listed = paired.json("rules", session)
    assert isinstance(listed, list)
    assert [(r["id"], r["effect"], r["pattern"], r["set_by"]) for r in listed] == [
        (allow["id"], "allow", "Edit(settings.py)", me),
        (deny["id"], "deny", "Edit(*.py)", me),
    ]
    removed = run_cli(paired.controller, "rules", "remove", deny["id"])
    assert removed.returncode == 0, removed.stderr
    assert [r["id"] for r in json.loads(paired.cli("rules", session, "--json"))] == [allow["id"]]


def test_diff_of_a_git_tree_with_an_untracked_file(paired: Paired) -> None:
    work = paired.workdir.resolve()

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=work,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (work / "app.py").write_text("x = 1\ny = 2\n")
    (work / ".gitignore").write_text("*.log\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    (work / "app.py").write_text("x = 1\ny = 3\n")
    (work / "notes.txt").write_text(f"new {TITLE_ESCAPE}\n")
    (work / "build.log").write_text("ignored\n")
    session = paired.run(*python("pass"), title="diff me")
    Watcher(paired.controller, session).finish()

    report = paired.json("diff", session)
    assert isinstance(report, dict)
    assert report["root"] == str(work) and report["truncated"] is False
    assert [(f["path"], f["status"], f["added"], f["removed"]) for f in report["files"]] == [
        ("app.py", "modified", 1, 1),
        ("notes.txt", "untracked", 1, 0),
    ]
    assert "-y = 2\n+y = 3\n" in report["diff"]
    assert f"+++ b/notes.txt\n@@ -0,0 +1 @@\n+new {TITLE_ESCAPE}\n" in report["diff"]
    assert "build.log" not in report["diff"]

    plain = run_cli(paired.controller, "diff", session)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b" not in plain.stdout and "+new \\x1b]0;pwned\\x07" in plain.stdout
    stat = paired.cli("diff", session, "--stat")
    assert " modified  app.py  +1 -1" in stat and " untracked notes.txt  +1 -0" in stat


def concurrent_hook_session(payloads: Path) -> list[str]:
    """A session that runs the PreToolUse hook for every payload at once (so their
    checkpoints wait together) and prints each decision, in payload order."""
    return python(
        "import json, subprocess, sys\n"
        f"payloads = json.load(open({str(payloads)!r}))\n"
        "hooks = [subprocess.Popen([sys.executable, '-m', 'starmux.cli', 'hook',"
        " 'claude-pretooluse', '--timeout', '5m'], stdin=subprocess.PIPE,"
        " stdout=subprocess.PIPE, text=True) for _ in payloads]\n"
        "for hook, payload in zip(hooks, payloads):\n"
        "    hook.stdin.write(json.dumps(payload)); hook.stdin.close()\n"
        "for hook in hooks:\n"
        "    print(json.dumps(json.loads(hook.stdout.read())), flush=True)\n"
        "    hook.wait()\n"
    )


def test_a_rule_answers_the_matching_checkpoints_already_waiting(paired: Paired) -> None:
    """Four edits wait at once. `approve --for-session` on the first sets an allow
    rule that answers the second (same file) at once, not the others; a deny rule set
    on the third answers the fourth. Audit rows name rule and device."""
    work = paired.workdir.resolve()
    settings, secrets, other = work / "settings.py", work / "secrets.py", work / "other.py"
    settings.write_text("DEBUG = True\nNAME = 'shop'\n")
    secrets.write_text("KEY = 1\n")
    other.write_text("X = 1\n")
    payloads = work / "payloads.json"
    payloads.write_text(
        json.dumps(
            [
                edit(settings, "DEBUG = True", "DEBUG = False", 11),
                edit(settings, "NAME = 'shop'", "NAME = 'store'", 12),
                edit(secrets, "KEY = 1", "KEY = 2", 13),
                edit(other, "X = 1", "X = 2", 14),
            ]
        )
    )
    session = paired.run(*concurrent_hook_session(payloads), title="claude")

    def waiting(count: int) -> list[dict[str, object]] | None:
        rows: list[dict[str, object]] = json.loads(paired.cli("approvals", "--json"))
        return rows if len(rows) == count else None

    rows = poll(lambda: waiting(4), within=60, what="four waiting checkpoints")
    by_file = {str(r["title"]).rsplit("/", 1)[-1]: r for r in rows}
    assert sorted(by_file) == ["other.py", "secrets.py", "settings.py"]
    first, second = sorted(
        (r for r in rows if str(r["title"]).endswith("settings.py")),
        key=lambda r: "False" in str(r["preview"]["text"]),  # type: ignore[index]
        reverse=True,
    )

    approved = paired.json("approve", str(first["id"]), "--for-session")
    assert isinstance(approved, dict) and approved["ok"] is True, approved
    allow = approved["rule"]
    # The other settings.py edit was answered by the rule; secrets.py and other.py wait.
    left = poll(lambda: waiting(2), within=30, what="the allow rule answering the second")
    assert {r["id"] for r in left} == {by_file["secrets.py"]["id"], by_file["other.py"]["id"]}

    denied = paired.json(
        "deny", str(by_file["secrets.py"]["id"]), "--for-session", "--rule", "Edit(*.py)"
    )
    assert isinstance(denied, dict) and denied["ok"] is True, denied
    deny = denied["rule"]

    watcher = Watcher(paired.controller, session)
    assert watcher.finish() == 0
    outputs = [json.loads(line)["hookSpecificOutput"] for line in watcher.lines if line.strip()]
    assert [o["permissionDecision"] for o in outputs] == ["allow", "allow", "deny", "deny"]
    me = load_node_keys(paired.controller / "controller.key").fingerprint
    device = f"laptop ({me})"
    assert (
        f"allowed by rule {allow['id']} Edit(settings.py) set by {device}"
        in (outputs[1]["permissionDecisionReason"])
    )
    assert (
        f"denied by rule {deny['id']} Edit(*.py) set by {device}"
        in (outputs[3]["permissionDecisionReason"])
    )
    rows_audited = audit(paired.daemon.home)
    assert any(
        event == "checkpoint.approved"
        and f"checkpoint {second['id']} " in detail
        and f"allowed by rule {allow['id']}" in detail
        and f"set by {device}" in detail
        for event, detail in rows_audited
    ), rows_audited
    assert any(
        event == "checkpoint.denied"
        and f"checkpoint {by_file['other.py']['id']} " in detail
        and f"denied by rule {deny['id']} Edit(*.py)" in detail
        and f"set by {device}" in detail
        for event, detail in rows_audited
    ), rows_audited
