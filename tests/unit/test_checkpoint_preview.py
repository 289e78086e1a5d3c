"""Checkpoint previews (starmux/checkpoint_preview.py) and the Claude tool preview
(daemon/tool_preview.py) on real files: the diff is exact, the cap is said."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.checkpoint_preview import (
    MAX_PREVIEW,
    CheckpointPreview,
    Edit,
    EditDoesNotApply,
    PreviewKind,
    apply_edits,
    from_json,
    preview,
    to_json,
    unified_diff,
)
from starmux.daemon.tool_preview import tool_preview
from starmux.errors import UsageError
from starmux.messages import APP, CheckpointRaised

DATA = Path(__file__).resolve().parent.parent / "data" / "claude"


def test_edit_preview_is_the_exact_unified_diff(tmp_path: Path) -> None:
    target = tmp_path / "settings.py"
    target.write_text("import os\n\nDEBUG = True\nNAME = 'shop'\n")
    payload = json.loads((DATA / "edit.json").read_text())
    payload["tool_input"]["file_path"] = str(target)
    result = tool_preview("Edit", payload["tool_input"], str(tmp_path))
    assert result.type is PreviewKind.DIFF and result.subject == str(target)
    assert result.text == (
        f"--- a{target}\n"
        f"+++ b{target}\n"
        "@@ -1,4 +1,4 @@\n"
        " import os\n"
        " \n"
        "-DEBUG = True\n"
        "+DEBUG = False\n"
        " NAME = 'shop'\n"
    )
    # git agrees: the diff applies to the file as it is.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    check = subprocess.run(
        ["git", "apply", "--check", "-p1", "--unsafe-paths", f"--directory={tmp_path}"],
        input=result.text.replace(f"a{target}", "a/settings.py").replace(
            f"b{target}", "b/settings.py"
        ),
        text=True,
        cwd=tmp_path,
        capture_output=True,
    )
    assert check.returncode == 0, check.stderr


def test_write_of_a_new_file_diffs_against_dev_null(tmp_path: Path) -> None:
    payload = json.loads((DATA / "write.json").read_text())
    payload["tool_input"]["file_path"] = str(tmp_path / "release.yml")
    result = tool_preview("Write", payload["tool_input"], str(tmp_path))
    assert result.text.startswith(f"--- /dev/null\n+++ b{tmp_path}/release.yml\n@@ -0,0 +1,")
    assert "+      - run: make publish\n" in result.text


def test_bash_preview_is_the_command_and_cwd() -> None:
    payload = json.loads((DATA / "bash.json").read_text())
    result = tool_preview("Bash", payload["tool_input"], payload["cwd"])
    assert result.type is PreviewKind.COMMAND
    assert result.text == result.subject == payload["tool_input"]["command"]
    assert result.cwd == payload["cwd"]


def test_an_edit_that_does_not_apply_gets_a_text_preview(tmp_path: Path) -> None:
    target = tmp_path / "a.py"
    target.write_text("x = 1\n")
    result = tool_preview(
        "Edit", {"file_path": str(target), "old_string": "y", "new_string": "z"}, str(tmp_path)
    )
    assert result.type is PreviewKind.TEXT and "old_string not found" in result.text


def test_multi_edit_applies_in_order() -> None:
    edits = [Edit("a", "b"), Edit("b", "c", replace_all=True)]
    assert apply_edits("a b a", edits) == "c c a"
    with pytest.raises(EditDoesNotApply):
        apply_edits("x", [Edit("y", "z")])


def test_a_large_preview_is_cut_and_says_so() -> None:
    text = "".join(f"line {n}\n" for n in range(20_000))
    cut = preview(PreviewKind.DIFF, tool="Edit", subject="f", cwd="/", text=text)
    assert len(cut.text.encode()) <= MAX_PREVIEW and cut.text.endswith("\n")
    assert cut.truncated and cut.full_size == len(text.encode())
    assert "preview cut at 24 KiB" in cut.cap_note()
    small = preview(PreviewKind.TEXT, tool="", subject="", cwd="", text="hi")
    assert not small.truncated and small.cap_note() == ""


def test_a_raised_checkpoint_with_a_full_preview_fits_one_message() -> None:
    body = "b" * 16 * 1024
    full = preview(
        PreviewKind.DIFF, tool="Edit", subject="p" * 4096, cwd="c" * 4096, text="€" * 20000
    )
    APP.decode(APP.encode(CheckpointRaised("c-1", "t" * 200, body, 1.0, False, full)))


@given(st.text(max_size=300), st.text(max_size=300))
def test_json_round_trip(before: str, after: str) -> None:
    value = preview(
        PreviewKind.DIFF, tool="Edit", subject="f", cwd="/", text=unified_diff("f", before, after)
    )
    assert from_json(json.loads(json.dumps(to_json(value)))) == value


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"type": "shell"},
        {"type": "text", "text": 1},
        {"type": "text", "subject": "x\0"},
        {"type": "text", "extra": ""},
        {"type": "text", "text": "x" * (MAX_PREVIEW + 1)},
        {"type": "text", "text": "abc", "full_size": 1},
    ],
)
def test_hostile_previews_are_refused(bad: object) -> None:
    with pytest.raises(UsageError):
        from_json(bad)


def test_a_preview_from_a_machine_is_checked_when_decoded() -> None:
    with pytest.raises(UsageError):
        CheckpointPreview(PreviewKind.TEXT, "t" * 65, "", "", "", 0)
