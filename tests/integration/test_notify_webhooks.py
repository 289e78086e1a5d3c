"""Webhooks through every real part: controller → relay → daemon registers the target;
a real agent raises a checkpoint; the daemon POSTs to a real local HTTP endpoint."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from starmux.daemon.webhooks import RETRY_SCALE_ENV

from ..timeouts import poll, scaled
from . import checkpoint_agent
from .cluster import Paired, pair, pending_checkpoint, python
from .daemon_process import DaemonProcess, run_cli
from .push_service import Received, WebhookSink
from .relay_process import RelayProcess

SECRET_TITLE = "Deploy the-secret-title?"
SECRET_BODY = "rm -rf /srv/the-secret-command"
DECIDED_TITLE = "Deploy the-secret-title, decided?"


def agent(stamp: Path, *extra: str) -> list[str]:
    """Write when the checkpoint is about to be raised, then raise it."""
    return checkpoint_agent.agent(stamp, SECRET_TITLE, SECRET_BODY, *extra)


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    server = WebhookSink()
    yield server
    server.close()


def _notify(paired: Paired, *args: str) -> dict[str, object]:
    reply = json.loads(paired.cli("notify", *args, "--json"))
    assert isinstance(reply, dict)
    return reply


def _list(paired: Paired) -> list[dict[str, object]]:
    rows = json.loads(paired.cli("notify", "list", "--json"))
    assert isinstance(rows, list)
    return rows


def test_webhook_without_content_arrives_within_two_seconds(
    paired: Paired, sink: WebhookSink, tmp_path: Path
) -> None:
    added = _notify(paired, "webhook", sink.base + "/topic")
    machines = added["machines"]
    assert isinstance(machines, list) and machines[0]["accepted"] is True, added
    stamp = tmp_path / "raised-at"
    paired.run(*agent(stamp, "--timeout", "120"))
    post = sink.wait_for(1, within=10.0)[0]
    latency = post.at - float(stamp.read_text())
    raised = checkpoint_agent.raised_at(paired)
    print(
        f"checkpoint -> webhook: {latency * 1000:.0f} ms from the agent's call, "
        f"{(post.at - raised) * 1000:.0f} ms from the daemon's checkpoint-raised"
    )
    assert latency < scaled(2.0)
    assert post.path == "/topic"
    assert post.body == b"starmux: a checkpoint is waiting"
    everything = (post.body + json.dumps(post.headers).encode()).lower()
    for secret in (b"the-secret-title", b"the-secret-command", b"gpu-box", str(paired.workdir)):
        assert (secret if isinstance(secret, bytes) else secret.encode()) not in everything
    assert "Title" not in post.headers
    # Exactly one: nothing else was due (no reminder within a 120 s timeout's first 2 s).
    time.sleep(scaled(0.5))
    assert len(sink.received) == 1
    # notify list shows it active on the machine, with one delivery.
    row = poll(
        lambda: next(
            (m for t in _list(paired) for m in t["machines"] if m.get("delivered")),  # type: ignore[attr-defined]
            None,
        ),
        within=10.0,
        what="the delivery counted in notify list",
    )
    assert row["state"] == "active" and row["machine"] == "gpu-box"


def _of(session_title: str, sink: WebhookSink) -> list[Received]:
    """The POSTs about the session titled ``session_title`` (content ``full``), in the
    order they came: a raise or a reminder names it in its body, its end in its title."""
    with sink.lock:
        posts = list(sink.received)
    return [
        p
        for p in posts
        if p.headers.get("Title", "").startswith(f"gpu-box: {session_title} ")
        or f"session: {session_title}\n".encode() in p.body
    ]


def test_full_content_and_a_reminder_before_expiry_none_after_a_decision(
    paired: Paired, sink: WebhookSink, tmp_path: Path
) -> None:
    _notify(paired, "webhook", sink.base + "/full", "--content", "full")
    _notify(paired, "settings", "--reminder", "0.5")
    # Two checkpoints of 4 s, raised together so that the test waits out one timeout,
    # not two: nobody decides the first; the second is decided at once. Their POSTs
    # interleave: each is told apart by its session's title.
    one, two = "run one", "run two"  # the sessions' titles
    started = time.time()
    paired.run(*agent(tmp_path / "one", "--timeout", "4s"), title=one)
    paired.run(
        *checkpoint_agent.agent(tmp_path / "two", DECIDED_TITLE, SECRET_BODY, "--timeout", "4s"),
        title=two,
    )
    # 2: decided at once (once its raise was told): no reminder follows.
    poll(lambda: _of(two, sink) or None, within=10.0, what="the second raise's POST")
    checkpoint = pending_checkpoint(paired.cli, DECIDED_TITLE)
    paired.cli("approve", str(checkpoint["id"]))
    # 1: the reminder comes at half the timeout, before expiry; then the session ends
    # (the expiry's default, deny, fails it): told too.
    first, reminder, ended = poll(
        lambda: _of(one, sink)[:3] if len(_of(one, sink)) >= 3 else None,
        within=10.0,
        what="the first checkpoint's raise, reminder and end",
    )
    assert first.headers["Title"] == f"gpu-box: {SECRET_TITLE}"
    assert SECRET_BODY.encode() in first.body
    assert reminder.body.startswith(b"still waiting")
    raised = float((tmp_path / "one").read_text())
    assert 1.5 < reminder.at - raised < 4.0, reminder.at - raised
    assert reminder.at - started < 4.0 + scaled(2.0)
    assert ended.headers["Title"].startswith("gpu-box: ") and "failed" in ended.headers["Title"]
    # Past the second's reminder time (2 s) and its expiry (4 s), both counted from its
    # raise (the daemon's clock, this machine's): nothing more came.
    expires_at = checkpoint["expires_at"]
    assert isinstance(expires_at, float), checkpoint
    time.sleep(max(0.0, expires_at + 0.5 - time.time()))
    titles = [r.headers.get("Title", "") + " | " + r.body.decode()[:20] for r in sink.received]
    assert len(titles) == 5, titles  # the second's raise, then its session's success
    assert len(_of(one, sink)) == 3, titles
    decided = [r.headers.get("Title", "") + " | " + r.body.decode() for r in _of(two, sink)]
    assert len(decided) == 2 and decided[0].startswith(f"gpu-box: {DECIDED_TITLE} | "), decided
    assert "succeeded" in decided[1] and "still waiting" not in "".join(decided), decided


def test_failing_endpoint_is_retried_reported_and_never_blocks(
    tmp_path: Path,
    relay: RelayProcess,
    daemons: list[DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The daemon reads it at start: the real schedule (0.5, 1, 2, 4, 8 s) at 0.4 times,
    # so the six tries take 6.2 s, not 15.5 s, and still back off the same way.
    monkeypatch.setenv(RETRY_SCALE_ENV, "0.4")
    paired = pair(tmp_path, relay, daemons)
    dead = WebhookSink(statuses=[500] * 100)
    try:
        _notify(paired, "webhook", dead.base + "/down")
        paired.run(*agent(tmp_path / "stamp", "--timeout", "120"))
        tries = dead.wait_for(4, within=15.0)
        gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
        print("retry gaps:", [round(g, 2) for g in gaps])
        assert gaps[1] > gaps[0] * 1.5 and gaps[2] > gaps[1] * 1.5  # backing off
        # The daemon goes on meanwhile: a session runs and reports at once.
        begun = time.monotonic()
        session = paired.run(*python("print('still here')"))
        poll(
            lambda: paired.session(session)["status"] == "succeeded" or None,
            within=10.0,
            what="a session while the webhook fails",
        )
        assert time.monotonic() - begun < scaled(5.0)
        # ... meanwhile indeed: the webhook was still being retried (its 6th try not
        # yet made) while that session ran and reported.
        assert len(dead.received) < 6, "the session outlasted the retries: no proof"
        # After its last retry the target shows failing, with why (never the URL).
        failing = poll(
            lambda: next(
                (
                    m
                    for t in _list(paired)
                    for m in t["machines"]  # type: ignore[attr-defined]
                    if m.get("state") == "failing"
                ),
                None,
            ),
            within=30.0,
            what="the target failing in notify list",
        )
        assert "HTTP 500 after 6 tries" in str(failing["detail"])
        doctor = run_cli(paired.controller, "doctor", "--json")
        checks = json.loads(doctor.stdout)
        check = next(c for c in checks if c["name"] == "notifications")
        assert check["ok"] is False and "HTTP 500" in check["detail"], check
        assert "/down" not in doctor.stdout  # never the URL
    finally:
        dead.close()


def test_webhook_url_must_be_http(paired: Paired) -> None:
    for url in ("ftp://example.org/x", "file:///etc/passwd", "javascript:alert(1)", "nohost"):
        result = run_cli(paired.controller, "notify", "webhook", url)
        assert result.returncode != 0
        assert "http or https" in result.stderr or "URL" in result.stderr, result.stderr
    assert _list(paired) == []


def test_notify_test_then_remove(paired: Paired, sink: WebhookSink, tmp_path: Path) -> None:
    added = _notify(paired, "webhook", sink.base + "/t", "--content", "full")
    target = str(added["target"])
    _notify(paired, "test")
    post = sink.wait_for(1, within=10.0)[0]
    assert post.headers["Title"] == "gpu-box: starmux test"
    paired.cli("notify", "remove", target)
    assert _list(paired) == []
    paired.run(*agent(tmp_path / "stamp", "--timeout", "120"))
    pending_checkpoint(paired.cli, SECRET_TITLE)
    time.sleep(scaled(1.0))  # a POST would come within ~0.3 s of the raise
    assert len(sink.received) == 1
    # With no target left, `notify test` says so.
    refused = run_cli(paired.controller, "notify", "test")
    assert refused.returncode != 0 and "no notification target" in refused.stderr
