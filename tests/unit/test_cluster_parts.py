"""Network-free parts of the relay cluster: settings, the bus codec, the shared key."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from starmux.control import CONTROL, Failure, FailureCode, SessionStatus
from starmux.errors import ConfigError, RemoteProtocolError
from starmux.home import load_node_keys, save_node_keys
from starmux.identity import NodeKeys
from starmux.relay import app
from starmux.relay.bus import (
    CLOSE,
    CUT,
    MOVE,
    TICKET,
    PeerEntry,
    close_command,
    cut_command,
    decode_command,
    move_command,
    ticket_command,
)
from starmux.relay.config import load_config
from starmux.relay.pg_registry import PostgresRegistry
from starmux.relay.pg_schema import redact_url
from starmux.relay.registry import RegistryError

PG = "postgresql://starmux:secret@db:5432/starmux"


def test_embedded_by_default_and_cluster_settings_from_everywhere(tmp_path: Path) -> None:
    config = load_config({})
    assert (config.registry, config.bus, config.key_file) == (None, None, None)
    toml = tmp_path / "relay.toml"
    toml.write_text('[relay]\nbus = "redis://r:6379/0"\nregistry_pool_size = 3\n')
    config = load_config(
        {"key_file": tmp_path / "k"},
        env={"STARMUX_RELAY_REGISTRY": PG},
        config_file=toml,
    )
    assert (config.registry, config.bus, config.registry_pool_size) == (PG, "redis://r:6379/0", 3)
    assert config.key_file == tmp_path / "k"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"registry": PG}, "go together"),
        ({"bus": "redis://r"}, "go together"),
        ({"registry": "mysql://x", "bus": "redis://r"}, "postgresql://"),
        ({"registry": PG, "bus": "http://r"}, "redis://"),
        ({"registry": PG, "bus": "redis://r", "registry_pool_size": 0}, "pool_size"),
    ],
)
def test_cluster_settings_are_checked(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(flags, env={})


def test_passwords_are_redacted() -> None:
    assert redact_url(PG) == "postgresql://starmux:***@db:5432/starmux"
    assert redact_url("redis://:pw@r:6379/0") == "redis://:***@r:6379/0"
    assert redact_url("redis://r:6379") == "redis://r:6379"


def test_presence_entries_round_trip_and_refuse_garbage() -> None:
    entry = PeerEntry(b"k" * 32, "node1", b"a" * 16, SessionStatus.MACHINE)
    assert PeerEntry.decode(entry.encode()) == entry
    for garbage in (b"", b"\x93\x01\x02\x03", entry.encode()[:-3], b"\x94\xa1k\xa1n\xa1a\xa1?"):
        with pytest.raises(RemoteProtocolError):
            PeerEntry.decode(garbage)


def test_commands_round_trip_and_refuse_garbage() -> None:
    assert decode_command(close_command("n", 4003, "revoked", after_flush=True, quietly=False)) == [
        CLOSE, "n", 4003, "revoked", True, False,
    ]  # fmt: skip
    assert decode_command(ticket_command(None)) == [TICKET, b""]
    assert decode_command(move_command(b"a", SessionStatus.MACHINE)) == [MOVE, b"a", "machine"]
    # A revoked machine's cut carries the notice and the signed revocation after it.
    assert decode_command(cut_command(b"notice", 4003, "revoked", b"proof")) == [
        CUT, b"notice", 4003, "revoked", b"proof",
    ]  # fmt: skip
    for garbage in (b"C", b"C\xc1", b"C\x91\xa4nope", b"C\x90", b"C\x01"):
        with pytest.raises(RemoteProtocolError):
            decode_command(garbage)


def test_shared_key_is_created_private_once(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "relay.key"
    keys, created = app.load_or_create_shared_key(path)
    assert created and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = app.load_or_create_shared_key(path)
    assert not created and again.sign_public == keys.sign_public
    assert os.listdir(path.parent) == ["relay.key"]  # no temporary file left


def test_nodes_racing_on_a_missing_key_file_end_with_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay.key"
    other = NodeKeys.generate()
    real_link = os.link

    def another_node_was_first(source: str, destination: str) -> None:
        save_node_keys(path, other)  # lands between our check and our link
        real_link(source, destination)

    monkeypatch.setattr(os, "link", another_node_was_first)
    keys, created = app.load_or_create_shared_key(path)
    assert not created
    assert keys.sign_public == other.sign_public == load_node_keys(path).sign_public


async def test_an_unreachable_registry_is_a_clear_refusal() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = PostgresRegistry(f"postgresql://starmux:secret@127.0.0.1:{port}/starmux")
    with pytest.raises(RegistryError) as refused:
        await registry.open()
    assert refused.value.code is FailureCode.UNAVAILABLE
    assert "secret" not in refused.value.message and "***" in refused.value.message
    assert CONTROL.decode(CONTROL.encode(Failure(1, refused.value.code, "x", ""))) is not None
