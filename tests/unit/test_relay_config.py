"""Relay configuration: defaults < TOML < environment < flags; bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from starmux.errors import ConfigError
from starmux.relay.config import Limits, RelayConfig, load_config


def test_defaults_are_safe() -> None:
    config = load_config({}, env={})
    assert config.host == "127.0.0.1"
    assert config.open_registration is False
    assert config.limits == Limits()
    assert config.url == "ws://127.0.0.1:8765"


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text(
        '[relay]\nport = 1111\nhost = "100.64.0.1"\n[relay.limits]\n'
        "send_queue_frames = 10\nhandshake_timeout = 3.5\n"
    )
    env = {
        "STARMUX_RELAY_PORT": "2222",
        "STARMUX_RELAY_SEND_QUEUE_FRAMES": "20",
        "STARMUX_RELAY_OPEN_REGISTRATION": "yes",
    }
    config = load_config({"port": 3333, "host": None}, env=env, config_file=toml)
    assert config.port == 3333  # flag
    assert config.host == "100.64.0.1"  # file (flag was not given)
    assert config.limits.send_queue_frames == 20  # env over file
    assert config.limits.handshake_timeout == 3.5  # file
    assert config.open_registration is True
    assert config.url == "ws://100.64.0.1:3333"


def test_config_file_from_environment(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text("port = 4444\n")
    assert load_config({}, env={"STARMUX_RELAY_CONFIG": str(toml)}).port == 4444


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STARMUX_RELAY_PORT": "http"}, "invalid value"),
        ({"STARMUX_RELAY_PORT": "70000"}, "out of range"),
        ({"STARMUX_RELAY_OPEN_REGISTRATION": "maybe"}, "invalid value"),
        ({"STARMUX_RELAY_NO_SUCH_THING": "1"}, "unknown relay setting"),
        ({"STARMUX_RELAY_MAX_FRAME_SIZE": "10"}, "max_frame_size"),
        ({"STARMUX_RELAY_SEND_QUEUE_FRAMES": "0"}, "at least 1"),
        ({"STARMUX_RELAY_TLS_CERT": "/x.pem"}, "go together"),
        ({"STARMUX_RELAY_TRUSTED_PROXIES": "10.0.0.0/8,proxy.example"}, "trusted_proxies"),
        ({"STARMUX_RELAY_SEND_QUEUE_BYTES": "70000"}, "two frames"),
        ({"STARMUX_RELAY_SEND_BUFFER_BUDGET": "1000000"}, "send_buffer_budget"),
        ({"STARMUX_RELAY_UPGRADE_TIMEOUT": "0"}, "positive"),
        ({"STARMUX_RELAY_METRICS_PORT": "70000"}, "out of range"),
        ({"STARMUX_RELAY_LIVEZ_PORT": "-1"}, "out of range"),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({}, env=env)


def test_bad_toml_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text("port = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, env={}, config_file=toml)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({}, env={}, config_file=tmp_path / "missing.toml")


def test_ipv6_and_public_url() -> None:
    assert RelayConfig(host="::1", port=1).url == "ws://[::1]:1"
    assert RelayConfig(public_url="wss://relay.example").url == "wss://relay.example"


def test_new_limits_have_safe_defaults() -> None:
    config = load_config({}, env={})
    assert config.trusted_proxies == ()  # no X-Forwarded-For is believed
    assert config.metrics_port is None and config.metrics_token == ""
    lim = config.limits
    assert lim.send_queue_bytes == 4 * 1024 * 1024
    assert lim.send_buffer_budget == 512 * 1024 * 1024
    assert lim.upgrade_timeout == 10.0


def test_trusted_proxies_from_the_environment_and_toml(tmp_path: Path) -> None:
    env = {"STARMUX_RELAY_TRUSTED_PROXIES": "10.0.0.1, 2001:db8::/64"}
    assert load_config({}, env=env).trusted_proxies == ("10.0.0.1", "2001:db8::/64")
    toml = tmp_path / "relay.toml"
    toml.write_text('[relay]\ntrusted_proxies = ["192.0.2.1"]\n')
    assert load_config({}, env={}, config_file=toml).trusted_proxies == ("192.0.2.1",)


def test_the_metrics_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    assert load_config({}, env={"STARMUX_RELAY_METRICS_TOKEN": "t0k"}).metrics_token == "t0k"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    env = {"STARMUX_RELAY_METRICS_TOKEN_FILE": str(path)}
    config = load_config({}, env=env)
    assert config.metrics_token == "from-file"
    assert "from-file" not in repr(config)  # never in a log line that prints the config
    with pytest.raises(ConfigError, match="secret"):
        load_config({"metrics_token": "on-the-command-line"}, env={})
    path.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config({}, env=env)
