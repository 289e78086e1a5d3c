"""What a compromised machine (or controller) can put in application messages: ids,
statuses and times are refused at the decoder unless they are well-formed."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from starmux.client.timefmt import local_time
from starmux.codec import MAX_TIMESTAMP
from starmux.decisions import Verdict
from starmux.errors import MessageError, UsageError
from starmux.messages import (
    APP,
    CheckpointDecided,
    CheckpointRaised,
    CommandAck,
    DecideCheckpoint,
    EventPage,
    LoggedEvent,
    Output,
    SessionStatusChanged,
    StartSession,
)
from starmux.session_state import Status

EVENT = {"seq": 1, "at": 1_700_000_000.0, "session": "s-0123456789", "body": b""}


def page(*events: dict[str, Any], epoch: str = "0123456789abcdef") -> bytes:
    return msgpack.packb(
        ["event-page", 1, {"epoch": epoch, "events": list(events), "more": False, "live": True}]
    )


def test_a_well_formed_page_decodes() -> None:
    decoded = APP.decode(page(EVENT))
    assert isinstance(decoded, EventPage)
    assert decoded.events == (LoggedEvent(1, 1_700_000_000.0, "s-0123456789", b""),)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(page({**EVENT, "at": float("inf")}), id="infinite-time"),
        pytest.param(page({**EVENT, "at": float("nan")}), id="nan-time"),
        pytest.param(page({**EVENT, "at": 1e300}), id="time-1e300"),
        pytest.param(page({**EVENT, "at": MAX_TIMESTAMP * 2}), id="after-year-3000"),
        pytest.param(page({**EVENT, "at": -1.0}), id="before-1970"),
        pytest.param(page({**EVENT, "session": "s-1\x1b]52;c;aGk=\x07"}), id="osc52-session"),
        pytest.param(page({**EVENT, "session": "s 1"}), id="space-in-session"),
        pytest.param(page({**EVENT, "session": ""}), id="empty-session"),
        pytest.param(page({**EVENT, "session": "s" * 65}), id="long-session"),
        pytest.param(page({**EVENT, "seq": 0}), id="seq-0"),
        pytest.param(page(EVENT, epoch="e\n"), id="newline-in-epoch"),
        pytest.param(page(EVENT, epoch=""), id="empty-epoch"),
    ],
)
def test_a_page_with_a_hostile_event_does_not_decode(data: bytes) -> None:
    with pytest.raises(MessageError, match="invalid event-page"):
        APP.decode(data)


def fields(kind: str, version: int = 1, **values: object) -> bytes:
    if kind == "checkpoint-raised":  # version 2 added the preview
        return msgpack.packb([kind, 2, {**values, "preview": None}])
    return msgpack.packb([kind, version, values])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            fields("session-status", status="running\x1b[2K", exit_code=None, detail=""),
            id="csi-in-status",
        ),
        pytest.param(
            fields("session-status", status="RUNNING", exit_code=None, detail=""),
            id="status-not-a-value",
        ),
        pytest.param(fields("output", stream="/dev/tty", data=b""), id="unknown-stream"),
        pytest.param(
            fields(
                "checkpoint-raised",
                checkpoint="c-\x1b[1A",
                title="",
                body="",
                expires_at=1.0,
                default_approve=False,
            ),
            id="csi-in-checkpoint-id",
        ),
        pytest.param(
            fields(
                "checkpoint-raised",
                checkpoint="c-1",
                title="",
                body="",
                expires_at=float("inf"),
                default_approve=False,
            ),
            id="infinite-expiry",
        ),
        pytest.param(
            fields(
                "checkpoint-decided",
                checkpoint="c-1",
                decision="approved\r",
                by=b"",
                reason="",
                decided_at=1.0,
            ),
            id="decision-not-a-value",
        ),
        pytest.param(
            fields(
                "checkpoint-decided",
                checkpoint="c-1",
                decision="approved",
                by=b"x",
                reason="",
                decided_at=1.0,
            ),
            id="short-decider-key",
        ),
        pytest.param(
            fields(
                "decide-checkpoint",
                checkpoint="c-1",
                approve=True,
                reason="",
                decided_at=1e300,
                signature=b"",
            ),
            id="decision-time-1e300",
        ),
        pytest.param(
            fields("command-ack", command_id="k-1\x07", ok=True, error="", hint="", result=""),
            id="bell-in-command-id",
        ),
        pytest.param(
            fields(
                "start-session",
                2,
                session="../s",
                argv=["x"],
                cwd="/",
                title="",
                env={},
                pty=False,
                attachments=[],
            ),
            id="path-as-session-id",
        ),
        pytest.param(
            fields(
                "start-session",
                2,
                session="s-1",
                argv=["x"],
                cwd="/",
                title="",
                env={},
                pty=False,
                attachments=["../../etc/passwd"],
            ),
            id="path-as-attachment",
        ),
        pytest.param(
            fields("artifact-published", artifact="a-1", name="../x", size=1, digest=bytes(32)),
            id="path-as-artifact-name",
        ),
        pytest.param(
            fields("file-chunk", transfer="t-1", index=-1, data=b""),
            id="negative-chunk-index",
        ),
    ],
)
def test_hostile_ids_statuses_and_times_do_not_decode(data: bytes) -> None:
    with pytest.raises(MessageError, match="invalid"):
        APP.decode(data)


def test_our_own_code_cannot_build_them_either() -> None:
    with pytest.raises(UsageError, match="session status"):
        SessionStatusChanged("done", 0, "")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="checkpoint id"):
        CheckpointRaised("", "t", "", 1.0, False)
    with pytest.raises(UsageError, match="decision"):
        CheckpointDecided("c-1", "maybe", b"", "", 1.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="output stream"):
        Output("stdin", b"")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="command id"):
        CommandAck("k 1", True, "", "", "")
    with pytest.raises(UsageError, match="session id"):
        StartSession("s\n", ("x",), "/", "", {}, False)
    # Valid ones round-trip.
    for message in (
        SessionStatusChanged(Status.WAITING_APPROVAL, None, ""),
        CheckpointDecided("c-1", Verdict.EXPIRED, b"", "", 0.0),
        DecideCheckpoint("c-1", True, "", MAX_TIMESTAMP, b""),
    ):
        assert APP.decode(APP.encode(message)) == message


@pytest.mark.parametrize(
    "timestamp", [float("inf"), float("-inf"), float("nan"), 1e300, -1e300, 2.0**63]
)
def test_time_formatting_is_total(timestamp: float) -> None:
    assert local_time(timestamp) == "?"


def test_time_formatting_of_ordinary_times() -> None:
    assert local_time(None) == "never"
    assert local_time(None, none="-") == "-"
    assert local_time(MAX_TIMESTAMP)[:4] in {"2999", "3000"}
    assert len(local_time(1_700_000_000.0)) == len("2023-11-14 22:13:20")
