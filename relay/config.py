"""Relay configuration, read once at the edge: flags, then ``STARMUX_RELAY_*``, then TOML.

Every limit has a safe default. :func:`load_config` is the only place that reads the
environment or a config file; everything else takes a :class:`RelayConfig`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starmux.errors import ConfigError
from starmux.frames import MAX_FRAME_SIZE

ENV_PREFIX = "STARMUX_RELAY_"


@dataclass(frozen=True)
class Limits:
    max_frame_size: int = MAX_FRAME_SIZE
    frames_per_second: float = 20_000.0  # sustained, per connection
    frame_burst: int = 40_000
    bytes_per_second: float = 64 * 1024 * 1024
    byte_burst: int = 128 * 1024 * 1024
    send_queue_frames: int = 1024  # per connection; full → disconnect (4011)
    handshake_timeout: float = 10.0  # accept → authenticated
    ping_interval: float = 20.0  # WebSocket ping; no pong within ping_timeout → closed
    ping_timeout: float = 20.0
    connections_per_ip: int = 256
    pairing_requests_per_minute: int = 20  # tickets created/opened, per connection and per IP
    ticket_ttl: float = 600.0
    ticket_max_failures: int = 3


@dataclass(frozen=True)
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = field(default_factory=lambda: Path("starmux-relay-data"))
    tls_cert: Path | None = None
    tls_key: Path | None = None
    open_registration: bool = False
    public_url: str | None = None  # the URL clients use, if not ws(s)://host:port
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url
        scheme = "wss" if self.tls_cert else "ws"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"


_TOP = {f.name: f for f in dataclasses.fields(RelayConfig) if f.name != "limits"}
_LIMITS = {f.name: f for f in dataclasses.fields(Limits)}


def _convert(name: str, kind: Any, raw: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    kind_text = str(kind)
    try:
        if "bool" in kind_text:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "Path" in kind_text:
            return Path(str(raw)).expanduser()
        if kind_text == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind_text == "float":
            return float(raw)
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid value {raw!r} for {name}") from exc


def _collect(source: Mapping[str, Any], origin: str) -> tuple[dict[str, Any], dict[str, Any]]:
    top: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for key, value in source.items():
        name = key.replace("-", "_")
        if name in _TOP:
            top[name] = _convert(name, _TOP[name].type, value)
        elif name in _LIMITS:
            limits[name] = _convert(name, _LIMITS[name].type, value)
        elif name == "limits" and isinstance(value, dict):
            _, nested = _collect(value, origin)
            limits.update(nested)
        else:
            raise ConfigError(f"unknown relay setting {key!r} in {origin}")
    return top, limits


def load_config(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> RelayConfig:
    """Merge defaults < TOML file < environment < flags (flags given as not-None values)."""
    env = os.environ if env is None else env
    top: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    file_path = config_file or (
        Path(env[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in env else None
    )
    if file_path is not None:
        try:
            data = tomllib.loads(file_path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file_path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path} is not valid TOML: {exc}") from exc
        section = data.get("relay", data)
        t, lim = _collect(section, str(file_path))
        top.update(t)
        limits.update(lim)
    env_values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key != f"{ENV_PREFIX}CONFIG"
    }
    t, lim = _collect(env_values, "the environment")
    top.update(t)
    limits.update(lim)
    t, lim = _collect({k: v for k, v in flags.items() if v is not None}, "the command line")
    top.update(t)
    limits.update(lim)
    config = RelayConfig(**top, limits=Limits(**limits))
    _validate(config)
    return config


def _validate(config: RelayConfig) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is out of range")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    lim = config.limits
    if not 1024 <= lim.max_frame_size <= MAX_FRAME_SIZE:
        raise ConfigError(f"max_frame_size must be between 1024 and {MAX_FRAME_SIZE}")
    for name in ("frames_per_second", "bytes_per_second", "handshake_timeout", "ticket_ttl"):
        if getattr(lim, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    for name in (
        "send_queue_frames",
        "connections_per_ip",
        "ticket_max_failures",
        "pairing_requests_per_minute",
        "frame_burst",
        "byte_burst",
    ):
        if getattr(lim, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
