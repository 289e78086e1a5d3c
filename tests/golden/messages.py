"""Every message kind encoded, and mutated encodings with the Python verdict."""

from __future__ import annotations

from typing import Any

import msgpack

from starmux.codec import MessageCodec
from starmux.errors import StarmuxError
from starmux.messages import APP

from .schema import CODECS, codec_classes, schema

# --- messages: samples and mutations -------------------------------------------------

KEY = bytes(range(32))


def _sample(t: Any) -> Any:
    if t == "int":
        return 7
    if t == "float":
        return 1.5
    if t == "str":
        return "a-1"
    if t == "bin":
        return b"\x01\x02"
    if t == "bool":
        return True
    if t == "nil":
        return None
    if "range" in t:
        return t["range"][0] if t["of"] == "int" else float(t["range"][0]) + 0.25
    if "enum" in t:
        return t["enum"][0]
    if "union" in t:
        return _sample(next(u for u in t["union"] if u != "nil"))
    if "list" in t:
        return [_sample(t["list"])]
    if "map" in t:
        return {"k": _sample(t["map"])}
    raise TypeError(t)


def _fields_sample(codec: str, kind: str) -> dict[str, Any]:
    spec = schema()[codec]["kinds"][kind]
    fields: dict[str, Any] = {}
    for name, t in spec["fields"]:
        if isinstance(t, dict) and "message" in t:
            fields[name] = _fields_sample(codec, t["message"])
        elif isinstance(t, dict) and "union" in t and any(_nested(u) for u in t["union"]):
            nested = next(u["message"] for u in t["union"] if _nested(u))
            fields[name] = _fields_sample(codec, nested)
        elif (
            isinstance(t, dict)
            and "list" in t
            and isinstance(t["list"], dict)
            and ("message" in t["list"])
        ):
            fields[name] = [_fields_sample(codec, t["list"]["message"])]
        else:
            fields[name] = _sample(t)
    fields.update(_OVERRIDES.get(kind, {}))
    return fields


def _nested(t: Any) -> bool:
    return isinstance(t, dict) and "message" in t


# Samples the generic rule cannot make valid (a message's own checks).
_OVERRIDES: dict[str, dict[str, Any]] = {
    "device-log-entry": {
        "account": bytes(16),
        "seq": 0,
        "prev": bytes(32),
        "op": "remove",
        "subject": KEY,
        "card": b"",
        "role": "",
        "author": KEY,
        "signature": bytes(64),
    },
    "machine-load": {"tags": ["gpu", "os=linux"], "capacity": 4, "running": 1, "queued": 0},
    "task-progress": {"state": "running", "session": "s-1", "exit_code": None},
    "checkpoint-decided": {"by": KEY},
    "set-approval-rule": {"pattern": "Bash(npm test*)"},
    "approval-rule-set": {"pattern": "Edit(src/**)", "by": KEY},
    "approval-rule-removed": {"by": KEY},
    "offer-file": {"digest": KEY},
    "artifact-published": {"digest": KEY},
    "logged-event": {"seq": 1},
    "notify-target": {"target_kind": "webhook", "url": "https://ntfy.example/me"},
    "notify-status": {"device": KEY},
}

_WRONG = {
    "int": [1.0, "1", True, None, 2**63, 2**64 - 1, b"\x01"],
    "float": ["1", True, None, b"\x01"],
    "str": [b"a", 1, None, True],
    "bin": ["ab", 1, None, [1]],
    "bool": [1, 0, "true", None],
}


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _verdict(codec: MessageCodec, data: bytes) -> dict[str, Any]:
    try:
        message = codec.decode(data)
    except StarmuxError:
        return {"wire": data.hex(), "ok": False}
    return {"wire": data.hex(), "ok": True, "again": codec.encode(message).hex()}


def _mutations(fields: dict[str, Any], spec: list[list[Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names = list(fields)
    if names:
        out.append({k: v for k, v in fields.items() if k != names[0]})  # a field missing
    out.append({**fields, "zz-extra": 1})  # a field too many
    for name, t in spec:
        base = t["of"] if isinstance(t, dict) and "range" in t else t
        if isinstance(t, dict) and "range" in t:
            low, high = t["range"]
            bounds = (low - 1, high + 1, low, high)
            out.extend({**fields, name: v if base == "int" else float(v)} for v in bounds)
        wrongs = _WRONG.get(base, []) if isinstance(base, str) else [1.5, b"x"]
        out.extend({**fields, name: wrong} for wrong in wrongs)
        if base == "int":
            out.append({**fields, name: 2**63 - 1})
            out.append({**fields, name: -(2**63)})
            out.append({**fields, name: 2**53 + 1})
        if base == "float":
            out.append({**fields, name: 3})  # an int where a float goes: accepted
            out.append({**fields, name: float("nan")})
            out.append({**fields, name: float("inf")})
        if base == "str":
            texts = ("bad id!", "", "x" * 65, "ünï", "a\nb")
            out.extend({**fields, name: text} for text in texts)
        if isinstance(t, dict) and "enum" in t:
            out.append({**fields, name: "no-such-value"})
    return out


def messages_golden() -> list[dict[str, Any]]:
    table = []
    spec_all = schema()
    for codec_name, codec in CODECS.items():
        for kind, cls in sorted(codec_classes(codec).items()):
            fields = _fields_sample(codec_name, kind)
            good = pack([kind, cls.VERSION, fields])
            entry: dict[str, Any] = {"codec": codec_name, "kind": kind, **_verdict(codec, good)}
            assert entry["ok"], (kind, fields)
            table.append(entry)
            spec = spec_all[codec_name]["kinds"][kind]["fields"]
            wires = [pack([kind, cls.VERSION, mutated]) for mutated in _mutations(fields, spec)]
            wires += [
                pack([kind, cls.VERSION + 1, fields]),
                pack([kind, cls.VERSION, fields, 1]),
                pack([kind.upper(), cls.VERSION, fields]),
                pack([kind, cls.VERSION, list(fields.values())]),
                good + b"\x00",
                good[:-1],
            ]
            table.extend({"codec": codec_name, "kind": kind, **_verdict(codec, w)} for w in wires)
    # Shapes no field mutation makes.
    oddities = [
        bytes.fromhex("93a66f75747075740182a673747265616dc403737464a464617461c400"),
        bytes.fromhex("93a6")
        + b"output"
        + bytes.fromhex("0182a673747265616da6")
        + b"stdout"
        + bytes.fromhex("a464617461c70100"),  # ext type inside
        bytes.fromhex("93a6")
        + b"output"
        + bytes.fromhex("0182a673747265616da2ff")
        + b"\xfe"
        + bytes.fromhex("a464617461c400"),  # invalid UTF-8
        pack(["output", 1, {"stream": "stdout", "data": b"", 1: 2}]),  # a non-str key
        bytes.fromhex("93a6")
        + b"output"
        + bytes.fromhex("0183a673747265616da6")
        + b"stdout"
        + bytes.fromhex("a464617461c400a464617461c401ff"),  # a duplicate key
        bytes.fromhex("93a6")
        + b"output"
        + bytes.fromhex("0182a673747265616da6")
        + b"stdout"
        + bytes.fromhex("a464617461c4"),  # truncated
        pack(["session-status", 1, {"status": "running", "exit_code": 1.0, "detail": ""}]),
        pack(["session-status", 1, {"status": "running", "exit_code": None, "detail": ""}]),
        bytes.fromhex("93ae")
        + b"session-status"
        + bytes.fromhex("0183a6")
        + b"status"
        + bytes.fromhex("a7")
        + b"running"
        + bytes.fromhex("a9")
        + b"exit_code"
        + bytes.fromhex("cf0000000000000005")
        + bytes.fromhex("a6")
        + b"detail"
        + bytes.fromhex("a0"),
        pack(["cost", 1, {"input_tokens": 1, "output_tokens": 2, "usd": 1e308, "note": ""}]),
        pack(["cost", 1, {"input_tokens": 1, "output_tokens": 2, "usd": -0.0, "note": ""}]),
        b"",
        b"\xc1",
        pack(None),
        pack(["output", 1]),
        b"\x93" + b"\x91" * 200 + b"\x90",
    ]
    table.extend({"codec": "app", "kind": "", **_verdict(APP, wire)} for wire in oddities)
    too_big = pack(["output", 1, {"stream": "stdout", "data": bytes(60 * 1024)}])
    table.append({"codec": "app", "kind": "output", **_verdict(APP, too_big)})
    return table
