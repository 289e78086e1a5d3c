"""Where a session may run: ``resolve_session_cwd`` against the daemon's allowed roots,
with real directories and symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from starmux.daemon.agent_process import resolve_session_cwd
from starmux.errors import UsageError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "project").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return (tmp_path / "root").resolve()


def test_cwd_inside_a_root_is_accepted(root: Path) -> None:
    assert resolve_session_cwd(str(root / "project"), [root]) == root / "project"
    assert resolve_session_cwd(str(root), [root]) == root
    assert resolve_session_cwd(str(root / "project" / ".."), [root]) == root


def test_cwd_outside_the_roots_is_refused(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-root"
    other.mkdir()
    with pytest.raises(UsageError) as caught:
        resolve_session_cwd(str(tmp_path / "outside"), [root, other])
    message = str(caught.value)
    assert str(tmp_path / "outside") in message
    assert str(root) in message
    assert str(other) in message
    assert caught.value.hint is not None
    assert "--allow-root DIR" in caught.value.hint


def test_a_sibling_sharing_the_roots_prefix_is_outside(root: Path, tmp_path: Path) -> None:
    (tmp_path / "rootkit").mkdir()
    with pytest.raises(UsageError):
        resolve_session_cwd(str(tmp_path / "rootkit"), [root])


def test_a_symlink_escaping_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(UsageError, match="not inside an allowed root"):
        resolve_session_cwd(str(root / "escape"), [root])


def test_symlinks_are_resolved_in_the_cwd_and_the_roots(root: Path, tmp_path: Path) -> None:
    (root / "shortcut").symlink_to(root / "project")
    (tmp_path / "root-link").symlink_to(root)
    assert resolve_session_cwd(str(root / "shortcut"), [root]) == root / "project"
    assert resolve_session_cwd(str(root / "project"), [tmp_path / "root-link"]) == root / "project"


@pytest.mark.parametrize(
    ("cwd", "reason"),
    [
        ("missing", "does not exist"),
        ("project/file", "not a directory"),
    ],
)
def test_missing_dirs_and_files_are_refused(root: Path, cwd: str, reason: str) -> None:
    (root / "project" / "file").write_text("")
    with pytest.raises(UsageError, match=reason) as caught:
        resolve_session_cwd(str(root / cwd), [root])
    assert str(root / cwd) in str(caught.value)


@pytest.mark.parametrize("cwd", ["project", "./project", "", "~alice/project"])
def test_relative_cwd_is_refused(root: Path, cwd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)
    with pytest.raises(UsageError, match="absolute"):
        resolve_session_cwd(cwd, [root])


def test_tilde_means_the_daemon_users_home(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(root))
    assert resolve_session_cwd("~", [root]) == root
    assert resolve_session_cwd("~/project", [root]) == root / "project"
    assert resolve_session_cwd("~/project", [Path("~")]) == root / "project"


def test_no_roots_refuses_everything(root: Path) -> None:
    with pytest.raises(UsageError, match="allowed roots: none"):
        resolve_session_cwd(str(root), [])
