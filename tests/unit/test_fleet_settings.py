"""The daemon's tags and capacity: stored like --name on a real daemon database, bad
flags or a tampered file refused with a hint, and kept across ``--detach``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starmux.daemon.cli import foreground_argv
from starmux.daemon.fleet_settings import DEFAULT_CAPACITY, FleetSettings, check_flags, settle
from starmux.daemon.store import DaemonStore
from starmux.errors import ConfigError


@pytest.fixture
async def store(home: Path) -> AsyncIterator[DaemonStore]:
    opened = DaemonStore(home)
    await opened.open()
    yield opened
    await opened.close()


async def test_without_flags_no_tags_and_the_default_capacity(store: DaemonStore) -> None:
    assert await settle(store) == FleetSettings(frozenset(), DEFAULT_CAPACITY)


async def test_flags_are_stored_and_kept_by_a_start_without_them(home: Path) -> None:
    store = DaemonStore(home)
    await store.open()
    given = await settle(store, tags=["os=linux", "gpu", "gpu"], capacity=2)
    assert given == FleetSettings(frozenset({"gpu", "os=linux"}), 2)
    await store.close()
    store = DaemonStore(home)  # the next start, with no flags
    await store.open()
    try:
        assert await settle(store) == given
        # --tag replaces the whole set; --capacity alone leaves the tags.
        assert await settle(store, tags=["repo=api"]) == FleetSettings(frozenset({"repo=api"}), 2)
        assert await settle(store, capacity=3) == FleetSettings(frozenset({"repo=api"}), 3)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("tags", "capacity"),
    [(["GPU"], None), (["gpu,cpu"], None), (["x=\x1b[2J"], None), ([], 0), ([], 5000)],
)
async def test_bad_flags_are_refused_and_nothing_is_stored(
    store: DaemonStore, tags: list[str], capacity: int | None
) -> None:
    with pytest.raises(ConfigError):
        check_flags(tags, capacity)
    with pytest.raises(ConfigError):
        await settle(store, tags=tags, capacity=capacity)
    assert await settle(store) == FleetSettings(frozenset(), DEFAULT_CAPACITY)


@pytest.mark.parametrize(
    ("name", "value"),
    [("tags", "gpu,Bad Tag"), ("capacity", "two"), ("capacity", "0"), ("capacity", "99999")],
)
async def test_a_tampered_setting_is_a_config_error_with_a_hint(
    store: DaemonStore, name: str, value: str
) -> None:
    await store.set_setting(name, value)
    with pytest.raises(ConfigError) as caught:
        await settle(store)
    assert caught.value.hint


def test_detach_passes_tags_and_capacity_on(tmp_path: Path) -> None:
    argv = foreground_argv(
        tmp_path, relay_url=None, name=None, allow_roots=(), tags=("gpu", "os=linux"), capacity=2
    )
    assert argv[-6:] == ["--tag", "gpu", "--tag", "os=linux", "--capacity", "2"]


def test_the_cli_refuses_a_bad_tag_before_starting(tmp_path: Path) -> None:
    env = {**os.environ, "STARMUX_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    command = ["daemon", "start", "--relay", "ws://127.0.0.1:9", "--tag", "Not A Tag"]
    result = subprocess.run(
        [sys.executable, "-m", "starmux.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "not a tag" in result.stderr and "os=linux" in result.stderr  # the hint
    assert not (tmp_path / "home").exists()  # refused before anything was created
