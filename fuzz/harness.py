"""What every harness shares: its :class:`Target`, the atheris driver, crasher files.

A harness module defines ``check(data)``, the property under test: it feeds ``data``
to one parser and returns quietly when the parser refuses it with its documented
error; anything else escapes (an undocumented exception, or an ``AssertionError``
when an accepted input does not survive a round trip). ``check`` needs only
starmux, so the unit tests replay crashers without atheris; only
:func:`fuzz_main` imports atheris.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fuzz import HARNESSES

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "tests" / "data" / "fuzz"
CRASHERS_DIR = DATA_DIR / "crashers"

#: Python modules whose branches guide the fuzzer (msgpack and PyNaCl are C: opaque).
INSTRUMENTED = ("starmux", "urllib.parse", "ipaddress", "base64")


@dataclass(frozen=True)
class KnownBug:
    """A crash already reported whose product fix has not landed: fuzzing goes on past
    it (so CI stays useful), while its saved crasher stays a strict xfail in
    ``tests/unit/test_fuzz_regressions.py``. Delete both once the fix lands."""

    summary: str
    matches: Callable[[Exception], bool]


@dataclass(frozen=True)
class Target:
    name: str
    #: The property: refuses quietly with the documented error, raises otherwise.
    check: Callable[[bytes], None]
    #: A few valid encodings (file name → bytes) the fuzzer starts from; deterministic.
    seeds: Callable[[], dict[str, bytes]]
    #: The fuzzer's raw bytes → the bytes ``check`` takes and a crasher file holds
    #: (identity unless the harness derives structured input, e.g. text).
    reproducer: Callable[[bytes], bytes] | None = None
    known_bugs: tuple[KnownBug, ...] = ()

    @property
    def seed_dir(self) -> Path:
        return DATA_DIR / self.name

    @property
    def crasher_dir(self) -> Path:
        return CRASHERS_DIR / self.name


def load_targets() -> list[Target]:
    targets = []
    for name in HARNESSES:
        target = importlib.import_module(f"fuzz.{name}").TARGET
        assert isinstance(target, Target) and target.name == name
        targets.append(target)
    return targets


def save_crasher(name: str, data: bytes) -> Path:
    """Keep a failing input where the regression test replays it."""
    folder = CRASHERS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def atheris() -> types.ModuleType:
    """atheris, imported on demand: it ships no type hints, and the unit tests that
    import the harnesses must not need it."""
    try:
        return importlib.import_module("atheris")
    except ImportError as exc:
        raise SystemExit(
            "atheris is not installed: pip install atheris (wheels for Linux; "
            "elsewhere it builds from source and needs clang with libFuzzer)"
        ) from exc


#: Characters a parser of pasted text is likely to mishandle.
AWKWARD_CHARACTERS = "\x00\t\n\r \x7f\x85\xa0\u200b\u2028\ufeff\uffff\ud800\udc00%&=?#/@:[]+"
MAX_INSERTIONS = 4


def fuzzed_text(data: bytes, max_chars: int) -> str:
    """Arbitrary text, lone surrogates included, from fuzzer bytes.

    The data provider takes the text from the front (its first byte picks ASCII,
    UTF-16 or UTF-32) and, from the back, up to :data:`MAX_INSERTIONS` characters to
    insert into it. So a valid ASCII seed whose last byte is ``\\n`` (no insertion)
    is one byte flip away from valid text with any character anywhere in it, which
    mutating the UTF-16 or UTF-32 bytes would rarely reach.
    """
    provider = atheris().FuzzedDataProvider(data)
    insertions = [
        (provider.ConsumeIntInRange(0, 0xFFFF), _character(provider))
        for _ in range(provider.ConsumeIntInRange(0, MAX_INSERTIONS))
    ]
    text = provider.ConsumeUnicode(max_chars)
    assert isinstance(text, str)
    for position, character in insertions:
        index = position % (len(text) + 1)
        text = text[:index] + character + text[index:]
    return text


def _character(provider: Any) -> str:
    kind = provider.ConsumeIntInRange(0, 3)
    if kind == 0:
        return AWKWARD_CHARACTERS[provider.ConsumeIntInRange(0, len(AWKWARD_CHARACTERS) - 1)]
    low, high = ((0xD800, 0xDFFF), (0x80, 0xFFFF), (0, 0x10FFFF))[kind - 1]
    return chr(provider.ConsumeIntInRange(low, high))


def fuzz_main(target: Target, argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``target`` under libFuzzer; ``argv`` takes libFuzzer's flags and corpus dirs.

    The seed corpus is passed as ``-seed_inputs`` (read, never written), so a run
    without a corpus directory leaves ``tests/data/fuzz`` untouched.
    """
    lib = atheris()
    args = list(sys.argv if argv is None else argv)
    seeds = sorted(str(path) for path in target.seed_dir.glob("*") if path.is_file())
    if seeds and not any(arg.startswith("-seed_inputs=") for arg in args):
        args.append("-seed_inputs=" + ",".join(seeds))
        # Keep every seed even when its Python coverage equals another's: seeds that
        # differ only in what the data provider sees (ASCII vs UTF-16 text) matter.
        args.append("-keep_seed=1")
    _instrument(lib, INSTRUMENTED)
    lib.Setup(args, _entry(target))
    lib.Fuzz()
    raise SystemExit(0)  # not reached: libFuzzer exits the process


KNOWN_BUG_SEEN = "fuzz: known bug, not counted as a crash:"


def _entry(target: Target) -> Callable[[bytes], None]:
    reported: set[str] = set()

    def test_one_input(data: bytes) -> None:
        reproducer = target.reproducer(data) if target.reproducer else data
        try:
            target.check(reproducer)
        except Exception as exc:
            bug = next((bug for bug in target.known_bugs if bug.matches(exc)), None)
            if bug is None:
                path = save_crasher(target.name, reproducer)
                print(f"\nfuzz: {target.name} crashed; input saved to {path}", file=sys.stderr)
                raise
            if bug.summary not in reported:
                reported.add(bug.summary)
                print(f"\n{KNOWN_BUG_SEEN} {bug.summary}", file=sys.stderr)

    return test_one_input


def _instrument(lib: types.ModuleType, prefixes: Sequence[str]) -> None:
    # atheris.instrument_all() would also work but patches every loaded function
    # (about 9 s at each start); only the parsers' own code needs coverage feedback.
    def wanted(module: object) -> bool:
        return isinstance(module, str) and any(
            module == prefix or module.startswith(prefix + ".") for prefix in prefixes
        )

    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and wanted(obj.__module__):
            lib.instrument_func(obj)
