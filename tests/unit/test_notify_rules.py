"""The notification rules, network-free: who is told what, when, with what words."""

from __future__ import annotations

import nacl.public
import pytest

from starmux.errors import CryptoError, UsageError
from starmux.identity import NodeKeys
from starmux.notify_delivery import (
    RateBudget,
    check_webhook_url,
    describe_url,
    retry_delay,
    webhook_request,
)
from starmux.notify_push import (
    PADDED_SIZE,
    SEALED_SIZE,
    _signed,
    note_of,
    open_notification,
    seal_notification,
)
from starmux.notify_rules import (
    ContentLevel,
    DeviceSettings,
    Notification,
    NotifyKind,
    Planner,
    Target,
    TargetKind,
)

PHONE, LAPTOP = b"p" * 32, b"l" * 32


def planner() -> Planner:
    p = Planner(machine="gpu-box")
    p.set_target(Target("w-1", LAPTOP, TargetKind.WEBHOOK, ContentLevel.NONE, "https://x/t"))
    p.set_target(Target("p-1", PHONE, TargetKind.PUSH, ContentLevel.FULL))
    p.session_created("s-1", title="deploy", cwd="/srv/app")
    return p


def raise_one(p: Planner, at: float = 100.0, timeout: float = 100.0) -> list[str]:
    out = p.checkpoint_raised(
        "s-1", "c-1", title="Deploy?", body="make deploy", at=at, expires_at=at + timeout
    )
    return sorted(d.target.id for d in out)


def test_a_checkpoint_tells_every_target_once_and_reminds_at_the_fraction() -> None:
    p = planner()
    p.set_settings(PHONE, DeviceSettings(reminder_fraction=0.5))
    assert raise_one(p) == ["p-1", "w-1"]
    assert raise_one(p) == []  # the same checkpoint again: nothing
    assert p.next_due() == 150.0  # the phone at half, the laptop at 0.75 (175)
    assert [d.target.id for d in p.due(149.9)] == []
    reminder = p.due(150.0)
    assert [(d.target.id, d.notification.kind) for d in reminder] == [("p-1", NotifyKind.REMINDER)]
    assert [d.target.id for d in p.due(175.0)] == ["w-1"]
    assert p.due(1000.0) == [] and p.next_due() is None


def test_no_reminder_after_a_decision_or_the_session_ending() -> None:
    p = planner()
    raise_one(p)
    p.checkpoint_decided("c-1")
    assert p.next_due() is None and p.due(1000.0) == []
    raise_one(p)
    p.session_ended("s-1", "cancelled", at=120.0)
    assert p.due(1000.0) == []


def test_a_restart_restores_reminders_without_telling_again() -> None:
    p = planner()
    told = p.checkpoint_raised(
        "s-1", "c-1", title="T", body="", at=100.0, expires_at=200.0, announce=False
    )
    assert told == [] and p.next_due() == 175.0
    assert len(p.due(175.0)) == 2


def test_session_ends_notify_once_and_cancelled_not_at_all() -> None:
    p = planner()
    told = p.session_ended("s-1", "failed", at=1.0)
    assert len(told) == 2 and told[0].notification.session_title == "deploy"
    p.session_created("s-2", title="", cwd="")
    assert p.session_ended("s-2", "cancelled", at=1.0) == []
    assert p.session_ended("s-3", "running", at=1.0) == []


def test_settings_and_looking_devices_are_skipped() -> None:
    p = planner()
    p.set_settings(LAPTOP, DeviceSettings(kinds=frozenset({NotifyKind.FAILED})))
    p.viewing(PHONE, "s-1", until=150.0)
    assert raise_one(p) == []  # the laptop does not want it, the phone is looking
    p.viewing(PHONE, "s-1", until=150.0)
    assert sorted(d.target.id for d in p.session_ended("s-1", "failed", at=151.0)) == ["p-1", "w-1"]
    with pytest.raises(UsageError):
        DeviceSettings(reminder_fraction=1.0)


def test_content_none_says_nothing_but_that_something_waits() -> None:
    n = Notification(NotifyKind.CHECKPOINT, 1.0, "gpu-box", "s-1", "deploy", "c-1", "Deploy?",
                     "make deploy", "/srv/app", 2.0)  # fmt: skip
    headers, body = webhook_request(n, ContentLevel.NONE)
    assert body == b"starmux: a checkpoint is waiting" and "Title" not in headers
    everything = body + repr(headers).encode()
    for secret in (b"gpu-box", b"deploy", b"Deploy", b"/srv/app"):
        assert secret not in everything
    headers, body = webhook_request(n, ContentLevel.FULL)
    assert headers["Title"] == "gpu-box: Deploy?" and b"make deploy" in body
    ended = Notification(NotifyKind.LOST, 1.0, "gpu-box", "s-1", "deploy")
    assert webhook_request(ended, ContentLevel.NONE)[1] == b"starmux: a session finished"


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "file:///etc/passwd", "javascript:alert(1)", "https://", "http://a b/", ""]
)
def test_webhook_urls_are_http_or_https_only(url: str) -> None:
    with pytest.raises(UsageError):
        check_webhook_url(url)


def test_webhook_url_shown_without_secrets() -> None:
    url = "https://user:pw@ntfy.example:8443/topic?auth=tok"
    assert check_webhook_url(url) == url
    assert describe_url(url) == "https://ntfy.example:8443/topic"


def test_rate_budget_and_retry_schedule() -> None:
    budget = RateBudget(per_minute=60, burst=2)
    assert [budget.take("t", 0.0) for _ in range(3)] == [True, True, False]
    assert budget.take("t", 1.0) and not budget.take("t", 1.0)
    assert [retry_delay(n) for n in range(7)] == [None, 0.5, 1.0, 2.0, 4.0, 8.0, None]


def test_push_is_sealed_fixed_size_signed_and_tamper_evident() -> None:
    machine, device, stranger = NodeKeys.generate(), NodeKeys.generate(), NodeKeys.generate()
    small = Notification(NotifyKind.CHECKPOINT, 1.0, "m", title="Deploy?")
    big = Notification(NotifyKind.CHECKPOINT, 1.0, "m", title="T" * 500, body="b" * 5000)
    known = {machine.sign_public}.__contains__
    sealed = [
        seal_notification(
            machine, device_key=device.sign_public, device_dh=device.dh_public, notification=n
        )
        for n in (small, big)
    ]
    assert {len(s) for s in sealed} == {SEALED_SIZE}
    assert open_notification(device, sealed[0], machine_known=known).title == "Deploy?"
    assert open_notification(device, sealed[1], machine_known=known).title.startswith("TTT")
    with pytest.raises(CryptoError):
        open_notification(stranger, sealed[0], machine_known=known)
    with pytest.raises(CryptoError):  # from a machine this device never paired
        open_notification(device, sealed[0], machine_known=lambda key: False)
    for i in (0, 40, SEALED_SIZE - 1):
        flipped = bytearray(sealed[0])
        flipped[i] ^= 1
        with pytest.raises(CryptoError):
            open_notification(device, bytes(flipped), machine_known=known)
    # A forger who knows the device's public key (the relay does) cannot claim to be
    # the paired machine: the note names it, but the signature is not its.
    signed = _signed(stranger, device.sign_public, note_of(machine.sign_public, small))
    padded = len(signed).to_bytes(2, "big") + signed
    padded += bytes(PADDED_SIZE - len(padded))
    forged = nacl.public.SealedBox(nacl.public.PublicKey(device.dh_public)).encrypt(padded)
    with pytest.raises(CryptoError):
        open_notification(device, forged, machine_known=known)
