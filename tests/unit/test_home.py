"""The node's home folder and key files, on a real file system."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest

from starmux.errors import KeyFileError
from starmux.home import (
    default_home,
    ensure_private_dir,
    load_node_keys,
    load_or_create_node_keys,
    save_node_keys,
)
from starmux.identity import NodeKeys

KEYS = NodeKeys(b"\x01" * 32, b"\x02" * 32)
OTHER = NodeKeys(b"\x03" * 32, b"\x04" * 32)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask-000", "umask-022", "umask-077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Modes must come from the code, not from a lucky umask."""
    value: int = request.param
    old = os.umask(value)
    try:
        yield value
    finally:
        os.umask(old)


def test_save_then_load_round_trip(home: Path, umask: int) -> None:
    path = home / "node.key"
    save_node_keys(path, KEYS)
    assert load_node_keys(path) == KEYS
    assert mode(home) == 0o700
    assert mode(path) == 0o600
    assert [p.name for p in home.iterdir()] == ["node.key"]  # no temp file left behind


def test_key_file_format(home: Path) -> None:
    path = home / "node.key"
    save_node_keys(path, KEYS)
    header, seed, dh = path.read_text().splitlines()
    assert header == "starmux-node-keys-v1"
    assert base64.b64decode(seed) == KEYS.signing_seed
    assert base64.b64decode(dh) == KEYS.dh_private


def test_save_replaces_existing_keys(home: Path) -> None:
    path = home / "node.key"
    save_node_keys(path, KEYS)
    save_node_keys(path, OTHER)
    assert load_node_keys(path) == OTHER
    assert mode(path) == 0o600
    assert [p.name for p in home.iterdir()] == ["node.key"]


def test_a_stale_temp_file_from_a_crash_does_not_block_saving(home: Path) -> None:
    # A crash between create and rename leaves the temp file behind; in a container the
    # restarted daemon often gets the same pid, so the same temp name.
    save_node_keys(home / "node.key", KEYS)
    (home / f".node.key.{os.getpid()}.tmp").write_bytes(b"half a key")
    save_node_keys(home / "node.key", OTHER)
    assert load_node_keys(home / "node.key") == OTHER


@pytest.mark.parametrize("bit", [0o040, 0o020, 0o010, 0o004, 0o002, 0o001])
def test_key_file_open_to_others_is_refused(home: Path, bit: int) -> None:
    path = home / "node.key"
    save_node_keys(path, KEYS)
    path.chmod(0o600 | bit)
    with pytest.raises(KeyFileError, match="accessible by other users") as info:
        load_node_keys(path)
    assert info.value.hint is not None
    assert f"chmod 600 {path}" in info.value.hint
    assert mode(path) == 0o600 | bit  # refused, not silently fixed


def test_world_readable_key_file_is_refused(home: Path) -> None:
    path = home / "node.key"
    save_node_keys(path, KEYS)
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        load_node_keys(path)
    assert info.value.hint is not None
    assert "chmod" in info.value.hint
    with pytest.raises(KeyFileError):
        load_or_create_node_keys(path)
    assert mode(path) == 0o644


@pytest.mark.parametrize("dir_mode", [0o755, 0o750, 0o705, 0o777])
def test_home_open_to_others_is_refused(home: Path, dir_mode: int) -> None:
    home.mkdir()
    home.chmod(dir_mode)
    with pytest.raises(KeyFileError, match="accessible by other users") as info:
        ensure_private_dir(home)
    assert info.value.hint == f"run: chmod 700 {home}"
    with pytest.raises(KeyFileError):
        save_node_keys(home / "node.key", KEYS)
    with pytest.raises(KeyFileError):
        load_or_create_node_keys(home / "node.key")
    assert list(home.iterdir()) == []  # nothing written into it
    assert mode(home) == dir_mode


def test_ensure_private_dir_creates_nested_and_accepts_existing(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    assert ensure_private_dir(path) == path
    assert mode(path) == 0o700
    assert ensure_private_dir(path) == path


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage\n", id="garbage"),
        pytest.param(b"\xff\xfe\x00binary", id="binary"),
        pytest.param(b"starmux-node-keys-v2\nAQ==\nAQ==\n", id="other-header"),
        pytest.param(b"starmux-node-keys-v1\n!!!!\n!!!!\n", id="bad-base64"),
        pytest.param(
            b"starmux-node-keys-v1\n"
            + base64.b64encode(b"\x01" * 31)
            + b"\n"
            + base64.b64encode(b"\x02" * 32)
            + b"\n",
            id="short-seed",
        ),
        pytest.param(b"starmux-node-keys-v1\n" + base64.b64encode(b"\x01" * 32) + b"\n", id="cut"),
        pytest.param(
            b"starmux-node-keys-v1\n"
            + base64.b64encode(b"\x01" * 32)
            + b"\n"
            + base64.b64encode(b"\x02" * 32)
            + b"\nextra\n",
            id="extra-line",
        ),
    ],
)
def test_garbage_key_file_is_refused(home: Path, content: bytes) -> None:
    home.mkdir(mode=0o700)
    path = home / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a starmux key file") as info:
        load_node_keys(path)
    assert info.value.hint is not None
    assert "backup" in info.value.hint
    with pytest.raises(KeyFileError):
        load_or_create_node_keys(path)
    assert path.read_bytes() == content  # never overwritten


def test_missing_key_file(home: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_node_keys(home / "node.key")


def test_symlinked_key_file_is_refused(home: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere" / "real.key"
    save_node_keys(real, KEYS)
    home.mkdir(mode=0o700)
    link = home / "node.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="cannot open"):
        load_node_keys(link)
    with pytest.raises(KeyFileError):
        load_or_create_node_keys(link)
    assert link.is_symlink()


def test_dangling_symlink_is_not_followed_to_create_keys(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "planted.key"
    home.mkdir(mode=0o700)
    link = home / "node.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError):
        load_or_create_node_keys(link)
    assert not target.exists()


def test_load_or_create_creates_once_then_loads(home: Path) -> None:
    path = home / "node.key"
    keys, created = load_or_create_node_keys(path)
    assert created
    assert mode(path) == 0o600
    assert mode(home) == 0o700
    content = path.read_bytes()
    again, created_again = load_or_create_node_keys(path)
    assert not created_again
    assert again == keys
    assert path.read_bytes() == content
    assert load_node_keys(path) == keys


def test_load_or_create_makes_fresh_keys_per_home(tmp_path: Path) -> None:
    a, _ = load_or_create_node_keys(tmp_path / "a" / "node.key")
    b, _ = load_or_create_node_keys(tmp_path / "b" / "node.key")
    assert a.signing_seed != b.signing_seed
    assert a.dh_private != b.dh_private


def test_default_home_honours_starmux_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STARMUX_HOME", str(tmp_path / "custom"))
    assert default_home() == tmp_path / "custom"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STARMUX_HOME", "~/starmux")
    assert default_home() == tmp_path / "starmux"


@pytest.mark.parametrize("value", [None, ""])
def test_default_home_falls_back_to_the_platform_dir(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("STARMUX_HOME", raising=False)
    else:
        monkeypatch.setenv("STARMUX_HOME", value)
    assert default_home() == Path(platformdirs.user_data_dir("starmux", appauthor=False))
