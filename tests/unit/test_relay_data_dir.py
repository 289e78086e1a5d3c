"""The relay's default data dir does not depend on the current directory (13.2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from starmux.relay.config import RelayConfig


def test_default_data_dir_is_the_user_data_dir_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    first = RelayConfig().data_dir
    monkeypatch.chdir(tmp_path)
    assert RelayConfig().data_dir == first
    assert first.is_absolute()
    assert first == tmp_path / "data" / "starmux" / "relay" or os.name != "posix"
