"""Fuzz the strict message codecs: :data:`starmux.messages.APP` (inside the encrypted
channels) and :data:`starmux.control.CONTROL` (between a node and the relay).

Every input goes to both. Only each codec's documented error may escape
(:class:`~starmux.errors.MessageError` from ``APP``,
:class:`~starmux.errors.RemoteProtocolError` from ``CONTROL``); a message it accepts
must re-encode (unless it then exceeds the size limit, see :func:`check_codec`), and
decode again to an equal message.

    python fuzz/app_messages.py [-atheris_runs=N] [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.harness import Target, fuzz_main

# The device, task and notification modules register their messages on the same codecs: imported
# here, so the codecs hold every kind whatever else was imported first.
from starmux import (
    control,
    device_control,
    device_messages,
    messages,
    notify_messages,
    notify_push,
    review_messages,
    task_messages,
    transfer_messages,
)
from starmux.codec import Message, MessageCodec
from starmux.control import CONTROL
from starmux.errors import MessageError, RemoteProtocolError, UsageError
from starmux.messages import APP
from starmux.task_state import TaskState

CODECS: tuple[tuple[str, MessageCodec, type[RemoteProtocolError]], ...] = (
    ("app", APP, MessageError),
    ("control", CONTROL, RemoteProtocolError),
)


def check(data: bytes) -> None:
    for _, codec, error in CODECS:
        check_codec(codec, error, data)


def check_codec(codec: MessageCodec, error: type[RemoteProtocolError], data: bytes) -> None:
    try:
        message = codec.decode(data)
    except error:
        return
    try:
        wire = codec.encode(message)
    except UsageError as exc:
        # Decoding accepts compact forms the encoder widens (an int or a float32 where
        # a float is declared comes back as a float64), so a message close to the size
        # limit can re-encode over it. Nothing re-encodes a received message, so that
        # alone is no bug; anything else refused here is.
        if "exceeds" not in exc.message:
            raise AssertionError(f"{message!r} does not re-encode") from exc
        return
    again = codec.decode(wire)
    assert same(again, message), f"{message!r} decoded again as {again!r}"
    assert codec.encode(again) == wire, "encoding is not a fixed point"


def same(a: object, b: object) -> bool:
    """Equality in which NaN equals NaN (a float field may carry one)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Message):
        return all(
            same(getattr(a, field.name), getattr(b, field.name))
            for field in dataclasses.fields(a)  # type: ignore[arg-type]
        )
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    return a == b


# --- seeds: one example of every message kind ------------------------------------


def example(hint: Any) -> Any:
    """A plausible value of a message field type (the codec's supported set)."""
    if hint is type(None):
        return None
    simple = {int: 42, float: 1_700_000_000.25, str: "build-box", bytes: bytes(range(32))}
    if hint is bool:
        return True
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return ENUM_CHOICES.get(hint, next(iter(hint)))
    if isinstance(hint, type) and issubclass(hint, Message):
        return example_message(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return example(next(arg for arg in args if arg is not type(None)))
    if origin is tuple:
        return (example(args[0]), example(args[0]))
    if origin is dict:
        return {"LANG": example(args[1])}
    raise AssertionError(f"no example for {hint!r}")


#: Fields whose strings are one of a few values (messages refuse anything else).
CHOICES = {
    "status": "running",
    "stream": "stdout",
    "decision": "approved",
    "pattern": "Bash(npm test*)",
}
#: Number fields with a narrower range than any number.
NUMBERS = {"reminder_fraction": 0.75}
#: Enum fields whose first value a message refuses (a machine never reports "queued").
ENUM_CHOICES: dict[type[enum.StrEnum], enum.StrEnum] = {TaskState: TaskState.RUNNING}


def example_message(cls: type[Message]) -> Message:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return cls(
        **{
            field.name: CHOICES[field.name]
            if field.name in CHOICES and hints[field.name] is str
            else NUMBERS.get(field.name, example(hints[field.name]))
            for field in fields
        }
    )


def message_classes(
    modules: tuple[types.ModuleType, ...], codec: MessageCodec
) -> list[type[Message]]:
    classes = [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
    ]
    registered = [cls for cls in classes if cls.KIND in codec.kinds]
    assert {cls.KIND for cls in registered} == codec.kinds, "a registered class is elsewhere"
    return registered


def seeds() -> dict[str, bytes]:
    found = {}
    for prefix, modules, codec in (
        (
            "app",
            (
                messages,
                device_messages,
                task_messages,
                transfer_messages,
                notify_messages,
                notify_push,
                review_messages,
            ),
            APP,
        ),
        ("control", (control, device_control, notify_messages), CONTROL),
    ):
        for cls in message_classes(modules, codec):
            found[f"{prefix}-{cls.KIND}"] = codec.encode(example_message(cls))
    return found


TARGET = Target("app_messages", check, seeds)

if __name__ == "__main__":
    fuzz_main(TARGET)
