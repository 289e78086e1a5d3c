"""Relay configuration, read once at the edge: flags, then ``STARMUX_RELAY_*``, then TOML.

Every limit has a safe default. :func:`load_config` is the only place that reads the
environment or a config file; everything else takes a :class:`RelayConfig`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starmux.errors import ConfigError
from starmux.frames import MAX_FRAME_SIZE
from starmux.url_host import url_host

ENV_PREFIX = "STARMUX_RELAY_"


def default_relay_data_dir() -> Path:
    """The platform's user data dir, ``starmux/relay`` (e.g. ~/.local/share/starmux/relay)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("starmux", appauthor=False)) / "relay"


@dataclass(frozen=True)
class Limits:
    max_frame_size: int = MAX_FRAME_SIZE
    frames_per_second: float = 20_000.0  # sustained, per connection
    frame_burst: int = 40_000
    bytes_per_second: float = 64 * 1024 * 1024
    byte_burst: int = 128 * 1024 * 1024
    send_queue_frames: int = 1024  # per connection; full → disconnect (4011)
    #: per connection, queued frames plus the socket's write buffer; over → 4011
    send_queue_bytes: int = 4 * 1024 * 1024
    #: all connections together; over → the biggest queues are shed (4011) first
    send_buffer_budget: int = 512 * 1024 * 1024
    upgrade_timeout: float = 10.0  # TCP accept → WebSocket handshake done; else dropped
    handshake_timeout: float = 10.0  # accept → authenticated
    ping_interval: float = 20.0  # WebSocket ping; no pong within ping_timeout → closed
    ping_timeout: float = 20.0
    connections_per_ip: int = 256  # open sockets per IP (IPv6: per /64), counted at accept
    #: new connections per IP (token bucket); over → the socket is dropped at accept
    connection_rate_per_ip: float = 50.0
    connection_burst_per_ip: int = 500
    #: authentications per key (token bucket); over → close 4009 before any registry read
    auth_rate_per_key: float = 1.0
    auth_burst_per_key: int = 30
    #: control requests (register, tickets, grants, lists...) per connection and per IP
    requests_per_second: float = 10.0
    request_burst: int = 50
    requests_per_second_per_ip: float = 100.0
    request_burst_per_ip: int = 500
    pairing_requests_per_minute: int = 20  # tickets created/opened, per key
    pairing_requests_per_minute_per_ip: int = 120  # the same, per IP (a NAT hides many)
    registrations_per_minute_per_ip: int = 10  # account registrations attempted
    ticket_ttl: float = 600.0
    ticket_max_failures: int = 3


@dataclass(frozen=True)
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    # Not relative to the current directory: a relay started once from elsewhere
    # made a new key, and every pinned node refused it.
    data_dir: Path = field(default_factory=default_relay_data_dir)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    open_registration: bool = False
    public_url: str | None = None  # the URL clients use, if not ws(s)://host:port
    log_level: str = "info"
    #: proxies whose X-Forwarded-For is believed (IPs or CIDRs); none by default, so a
    #: client cannot pick the address the per-IP limits count
    trusted_proxies: tuple[str, ...] = ()
    #: serve /metrics on its own listener (then not on the main one)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    #: a bearer token /metrics requires; from STARMUX_RELAY_METRICS_TOKEN or a file,
    #: never a flag (argv is visible to every local user)
    metrics_token: str = field(default="", repr=False)
    metrics_token_file: Path | None = None
    #: answer the load balancer's /livez from a thread on its own listener (see
    #: relay/livez_listener.py: a starved event loop answered too late)
    livez_host: str = "127.0.0.1"
    livez_port: int | None = None
    # The cluster (DESIGN.md section 12): both set, or neither (the embedded relay).
    registry: str | None = None  # postgresql://... — the shared registry
    bus: str | None = None  # redis://... — frames, presence, revocations between nodes
    registry_pool_size: int = 10  # PostgreSQL connections per node
    key_file: Path | None = None  # the relay identity; default <data_dir>/relay.key
    limits: Limits = field(default_factory=Limits)

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url
        scheme = "wss" if self.tls_cert else "ws"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"{scheme}://{url_host(host)}:{self.port}"


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
        if "None" in kind_text and raw in ("", None):
            return None
        if "Path" in kind_text:
            return Path(str(raw)).expanduser()
        if "tuple" in kind_text:
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind_text.startswith("int"):
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
    if "metrics_token" in flags and flags["metrics_token"] is not None:
        raise ConfigError("the metrics token is a secret: give it in a file or the environment")
    config = RelayConfig(**top, limits=Limits(**limits))
    if config.metrics_token_file is not None and not config.metrics_token:
        try:
            token = config.metrics_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read metrics token file {config.metrics_token_file}: {exc.strerror}"
            ) from exc
        config = dataclasses.replace(config, metrics_token=token)
    _validate(config)
    return config


def _validate(config: RelayConfig) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is out of range")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.metrics_port is not None and not 0 <= config.metrics_port <= 65535:
        raise ConfigError(f"metrics_port {config.metrics_port} is out of range")
    if config.livez_port is not None and not 0 <= config.livez_port <= 65535:
        raise ConfigError(f"livez_port {config.livez_port} is out of range")
    if config.metrics_token_file is not None and not config.metrics_token:
        raise ConfigError(f"the metrics token file {config.metrics_token_file} is empty")
    for proxy in config.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"trusted_proxies: {proxy!r} is not an IP address or network"
            ) from exc
    _validate_cluster(config)
    lim = config.limits
    if not 1024 <= lim.max_frame_size <= MAX_FRAME_SIZE:
        raise ConfigError(f"max_frame_size must be between 1024 and {MAX_FRAME_SIZE}")
    for name in (
        "frames_per_second",
        "bytes_per_second",
        "handshake_timeout",
        "upgrade_timeout",
        "ticket_ttl",
        "connection_rate_per_ip",
        "auth_rate_per_key",
        "requests_per_second",
        "requests_per_second_per_ip",
    ):
        if getattr(lim, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    for name in (
        "send_queue_frames",
        "connections_per_ip",
        "ticket_max_failures",
        "pairing_requests_per_minute",
        "frame_burst",
        "byte_burst",
        "send_queue_bytes",
        "send_buffer_budget",
        "connection_burst_per_ip",
        "auth_burst_per_key",
        "request_burst",
        "request_burst_per_ip",
        "pairing_requests_per_minute_per_ip",
        "registrations_per_minute_per_ip",
    ):
        if getattr(lim, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if lim.send_queue_bytes < 2 * lim.max_frame_size:
        raise ConfigError("send_queue_bytes must hold at least two frames of max_frame_size")
    if lim.send_buffer_budget < lim.send_queue_bytes:
        raise ConfigError("send_buffer_budget must be at least send_queue_bytes")


def _validate_cluster(config: RelayConfig) -> None:
    if (config.registry is None) != (config.bus is None):
        raise ConfigError(
            "--registry and --bus go together",
            hint="a cluster needs both PostgreSQL (registry) and Redis (bus); give neither"
            " for the embedded relay",
        )
    if config.registry is not None and not config.registry.startswith(
        ("postgresql://", "postgres://")
    ):
        raise ConfigError("--registry must be a postgresql:// URL")
    if config.bus is not None and not config.bus.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("--bus must be a redis://, rediss:// or unix:// URL")
    if not 1 <= config.registry_pool_size <= 1000:
        raise ConfigError("registry_pool_size must be between 1 and 1000")
