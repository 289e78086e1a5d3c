"""Replay what the fuzzers found, and their seeds, through each harness's check.

``tests/data/fuzz/crashers/<harness>/`` keeps every input that once made a parser
raise something other than its documented error or broke a round trip
(``fuzz/harness.py`` saves them); ``tests/data/fuzz/<harness>/`` holds the seed
corpus. Each file goes through the same ``check`` the fuzzer ran, which lets only
the documented error through: with no crasher saved yet, the seeds keep the loader
and the checks exercised. Needs no atheris.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import HARNESSES, harness
from fuzz.harness import CRASHERS_DIR, Target, load_targets

TARGETS = {target.name: target for target in load_targets()}

#: Crashers whose product fix has not landed yet: "<harness>/<file>" → why. Strict
#: xfail: once the fix lands the test passes unexpectedly and fails; then delete the
#: entry.
UNFIXED: dict[str, str] = {}


def crasher_files() -> list[tuple[str, Path]]:
    return [
        (target.name, path)
        for target in TARGETS.values()
        if target.crasher_dir.is_dir()
        for path in sorted(target.crasher_dir.iterdir())
        if path.is_file()
    ]


def seed_files() -> list[tuple[str, Path]]:
    return [
        (target.name, path)
        for target in TARGETS.values()
        for path in sorted(target.seed_dir.iterdir())
        if path.is_file()
    ]


def _cases() -> list[object]:
    cases: list[object] = []
    for kind, files in (("crashers", crasher_files()), ("seeds", seed_files())):
        for name, path in files:
            case_id = f"{kind}/{name}/{path.name}"
            reason = UNFIXED.get(f"{name}/{path.name}") if kind == "crashers" else None
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            cases.append(pytest.param(name, path, id=case_id, marks=marks))
    return cases


@pytest.mark.parametrize(("name", "path"), _cases())
def test_only_the_documented_error_escapes(name: str, path: Path) -> None:
    TARGETS[name].check(path.read_bytes())


def test_every_harness_has_seeds_and_crashers_are_filed_by_harness() -> None:
    assert set(TARGETS) == set(HARNESSES)
    assert {name for name, _ in seed_files()} == set(HARNESSES)
    if CRASHERS_DIR.is_dir():
        for entry in CRASHERS_DIR.iterdir():
            assert entry.name in HARNESSES or entry.name == "README.md", (
                f"{entry} is not replayed: crashers go in crashers/<harness>/ "
                f"with <harness> one of {HARNESSES}"
            )
    assert set(UNFIXED) <= {f"{name}/{path.name}" for name, path in crasher_files()}


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_seed_corpus_is_current(target: Target) -> None:
    on_disk = {path.name: path.read_bytes() for path in target.seed_dir.iterdir()}
    assert on_disk == target.seeds(), "a wire format changed: run python fuzz/make_corpus.py"


def test_a_crash_saves_its_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "CRASHERS_DIR", tmp_path)

    def check(data: bytes) -> None:
        raise ValueError("an undocumented error")

    target = Target("frames", check, dict, reproducer=lambda data: data[::-1])
    with pytest.raises(ValueError, match="undocumented"):
        harness._entry(target)(b"\x01\x02")
    [saved] = (tmp_path / "frames").iterdir()
    assert saved.read_bytes() == b"\x02\x01"  # what check saw, not the raw fuzz input
