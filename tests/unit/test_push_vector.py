"""A golden push for the web controller's service worker (issue 15): the keys, the
sealed bytes and what they must open to. The browser's code opens
``tests/data/push-vector.json`` with its own sealed-box and signature code and must
get ``note``; this test keeps the file honest against the Python reference
(:func:`starmux.notify_push.open_notification`).

Regenerate (only if the push format changes): ``python -m tests.unit.test_push_vector``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from starmux.identity import NodeKeys
from starmux.notify_push import SEALED_SIZE, open_notification, seal_notification
from starmux.notify_rules import Notification, NotifyKind

from .deterministic import counter_rng

VECTOR = Path(__file__).resolve().parents[1] / "data" / "push-vector.json"
NOTE = Notification(
    NotifyKind.CHECKPOINT,
    1_764_000_000.5,
    "gpu-box",
    "s-0123456789",
    "nightly deploy",
    "c-abcdef",
    "Deploy to prod?",
    "kubectl apply -f prod.yaml",
    "/srv/app",
    1_764_000_600.5,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def keys() -> tuple[NodeKeys, NodeKeys]:
    return NodeKeys.generate(counter_rng(b"push machine")), NodeKeys.generate(
        counter_rng(b"push device")
    )


def make() -> dict[str, Any]:
    machine, device = keys()
    sealed = seal_notification(
        machine, device_key=device.sign_public, device_dh=device.dh_public, notification=NOTE
    )
    return {
        "about": "a starmux push as the relay forwards it (PROTOCOL.md section 10.2)",
        "device_sign_public": _b64(device.sign_public),
        "device_dh_private": _b64(device.dh_private),
        "device_dh_public": _b64(device.dh_public),
        "machine_sign_public": _b64(machine.sign_public),
        "sealed": _b64(sealed),
        "note": {
            "kind": NOTE.kind.value,
            "at": NOTE.at,
            "machine_name": NOTE.machine,
            "session": NOTE.session,
            "session_title": NOTE.session_title,
            "checkpoint": NOTE.checkpoint,
            "title": NOTE.title,
            "body": NOTE.body,
            "cwd": NOTE.cwd,
            "expires_at": NOTE.expires_at,
        },
    }


def test_the_golden_push_opens_to_its_note() -> None:
    vector = json.loads(VECTOR.read_text())
    machine, device = keys()
    assert base64.b64decode(vector["device_dh_private"]) == device.dh_private
    sealed = base64.b64decode(vector["sealed"])
    assert len(sealed) == SEALED_SIZE
    note = open_notification(device, sealed, machine_known=lambda key: key == machine.sign_public)
    expected = vector["note"]
    assert note.machine == base64.b64decode(vector["machine_sign_public"])
    assert note.notify_kind.value == expected["kind"] and note.at == expected["at"]
    for name in ("machine_name", "session", "session_title", "checkpoint", "title", "body"):
        assert getattr(note, name) == expected[name], name
    assert note.cwd == expected["cwd"] and note.expires_at == expected["expires_at"]


if __name__ == "__main__":
    VECTOR.write_text(json.dumps(make(), indent=2) + "\n")
