"""The controller agent's local protocol core (starmux/agent_protocol.py): no I/O."""

from __future__ import annotations

import json

import pytest

from starmux import agent_protocol as wire


def line(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def test_a_request_round_trips_with_defaults_filled_in() -> None:
    request = wire.parse_request(wire.encode_request("run", machine="gpu", argv=["ls", "-l"])[:-1])
    assert request == wire.Request(
        "run",
        {
            "machine": "gpu",
            "argv": ["ls", "-l"],
            "cwd": "~",
            "title": "",
            "env": {},
            "pty": False,
            "attachments": [],
        },
    )
    assert wire.parse_request(line(op="watch", session="s-1")).fields == {
        "session": "s-1",
        "after": 0,
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "JSON object"),
        (b"{", "one JSON object"),
        (b'{"v": 1, "v": 1, "op": "ping"}', "appears twice"),
        (line(op="nope"), "unknown op"),
        (line(op="ping", extra=1), "unknown field"),
        (line(op="watch"), "needs the field 'session'"),
        (line(op="watch", session="s-1\x1b[2J"), "an id must be"),
        (line(op="watch", session="s-1", after=-1), "seq"),
        (line(op="watch", session="s-1", after=True), "seq"),
        (line(op="decide", checkpoint="c-1", approve=1), "true or false"),
        (line(op="run", machine="m", argv=[]), "argv"),
        (line(op="run", machine="m", argv=["x"], env={"A=B": "1"}), "environment variable"),
        (line(op="run", machine="m", argv=["x\u0000"]), "NUL"),
        (b'{"v": 1, "op": "decide", "checkpoint": "c", "approve": true, "reason": NaN}', "finite"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(wire.AgentProtocolError, match=message):
        wire.parse_request(raw)


def test_another_version_is_refused_with_a_restart_hint() -> None:
    with pytest.raises(wire.VersionMismatch) as caught:
        wire.parse_request(json.dumps({"v": 2, "op": "ping"}).encode())
    assert caught.value.code == "version"
    assert "starmux controller stop" in (caught.value.hint or "")


def test_lines_are_size_checked_before_parsing() -> None:
    with pytest.raises(wire.AgentProtocolError, match="longer than"):
        wire.parse_request(b" " * (wire.MAX_REQUEST + 1))
    with pytest.raises(wire.AgentProtocolError, match="larger than"):
        wire.encode_request("run", machine="m", argv=["x" * wire.MAX_REQUEST])


def test_replies_and_items_round_trip() -> None:
    assert wire.parse_reply(wire.ok(session="s-1", status="failed")[:-1]) == wire.Reply(
        True, {"session": "s-1", "status": "failed"}
    )
    refused = wire.parse_reply(wire.failure("too-late", "too late", "see logs")[:-1])
    assert refused == wire.Reply(False, {}, "too-late", "too late", "see logs")
    output = wire.parse_reply(wire.output_item(7, "stderr", b"\x00\xff\x1b")[:-1])
    assert output == wire.Item("output", {"seq": 7, "stream": "stderr", "data": b"\x00\xff\x1b"})
    status = wire.parse_reply(wire.status_item(8, "failed", 3, "why")[:-1])
    assert status == wire.Item(
        "status", {"seq": 8, "status": "failed", "exit_code": 3, "reason": "why"}
    )
    assert wire.parse_reply(wire.notice_item("offline")[:-1]) == wire.Item(
        "notice", {"text": "offline"}
    )


def test_every_line_written_is_one_line_of_ascii_whatever_the_text() -> None:
    hostile = "\x1b]52;c;cHduZWQ=\x07\n\u202e\ud800"[:-1] + "é"
    for encoded in (
        wire.ok(title=hostile),
        wire.notice_item(hostile),
        wire.failure("refused", hostile),
    ):
        assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
        encoded.decode("ascii")


@pytest.mark.parametrize(
    "raw",
    [
        line(ok="yes"),
        line(item="output", stream="stdin", data=""),
        line(item="output", stream="stdout", data="not base64!"),
        line(item="output", seq=-1, stream="stdout", data=""),
        line(item="status", status=1, exit_code=None),
        line(item="status", status="x", exit_code=1.5),
        line(item="video"),
        line(ok=False, code="made-up", error="e", hint=""),
        line(),
    ],
)
def test_bad_replies_are_refused(raw: bytes) -> None:
    with pytest.raises(wire.AgentProtocolError):
        wire.parse_reply(raw)


def test_failure_codes_and_output_sizes_are_checked_when_writing() -> None:
    with pytest.raises(ValueError):
        wire.failure("whatever", "e")
    with pytest.raises(ValueError):
        wire.output_item(1, "stdout", b"x" * (wire.MAX_OUTPUT_ITEM + 1))


def test_printable_escapes_everything_that_acts_on_a_terminal() -> None:
    from starmux.client.agent_cli import printable, when

    assert printable("ok é 漢") == "ok é 漢"
    assert printable("a\x1b]52;c;eA==\x07b") == "a\\x1b]52;c;eA==\\x07b"
    assert printable("\u202eevil\u2028x\r\n\t") == "\\u202eevil\\u2028x\\r\\n\\t"
    assert printable(3) == "3"
    for hostile in (float("inf"), float("nan"), 1e300, -1.0, "2026", True, None):
        assert when(hostile) == "?"
    assert when(0) != "?"


def test_a_task_submission_is_checked_field_by_field() -> None:
    line = b'{"v":1,"op":"submit","argv":["true"],"target":"gpu","count":3,"start_to_close":90}'
    request = wire.parse_request(line)
    assert request.fields["count"] == 3 and request.fields["start_to_close"] == 90.0
    assert request.fields["heartbeat"] == 60.0 and request.fields["id"] == ""
    for bad in (
        b'"count":0',
        b'"count":1001',
        b'"count":true',
        b'"priority":5000',
        b'"schedule_to_start":0',
        b'"heartbeat":-1',
        b'"start_to_close":"1s"',
        b'"id":"a/b"',
        b'"id":"' + b"x" * 59 + b'"',
    ):
        with pytest.raises(wire.AgentProtocolError):
            wire.parse_request(b'{"v":1,"op":"submit","argv":["true"],' + bad + b"}")


def test_tag_requests_carry_bounded_tag_lists() -> None:
    request = wire.parse_request(b'{"v":1,"op":"tag","machine":"m","add":["gpu"]}')
    assert request.fields == {"machine": "m", "add": ["gpu"], "remove": []}
    with pytest.raises(wire.AgentProtocolError):
        wire.parse_request(
            b'{"v":1,"op":"tag","machine":"m","add":' + b'["t"' + b',"t"' * 40 + b"]}"
        )


def test_task_items_stream_a_task_and_its_transition() -> None:
    event = {"old": "queued", "new": "assigned", "trigger": "assign", "machine": "m1"}
    line = wire.task_item({"id": "t1", "state": "assigned"}, event)
    assert wire.parse_reply(line[:-1]) == wire.Item(
        "task", {"task": {"id": "t1", "state": "assigned"}, "event": event}
    )
    assert wire.parse_reply(wire.task_item({"id": "t1"})[:-1]).fields["event"] is None
    with pytest.raises(wire.AgentProtocolError):
        wire.parse_reply(b'{"v": 1, "item": "task", "task": "t1"}')
    request = wire.parse_request(wire.encode_request("tasks", follow=True)[:-1])
    assert request.fields == {"state": "", "follow": True}
