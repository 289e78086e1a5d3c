"""What the relay shows to whom (issue 11, items 11 and 16, and 13):

- ``/metrics`` on its own listener, or behind a bearer token read from a file or
  the environment (never argv); ``/health`` public and saying nothing sensitive.
- The one-time registration token never on stdout: a 0600 file, gone once used.
- X-Forwarded-For believed only from configured proxies; IPv6 counted per /64.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import websockets

from starmux.close_codes import CloseCode
from starmux.codec import Message
from starmux.control import CreateTicket, Failure, TicketCreated
from starmux.identity import Role

from .conftest import RelayFactory, register_controller
from .node import RelayNode, ok
from .relay_process import free_port


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_health_says_only_whether_routing_works(relay_factory: RelayFactory) -> None:
    relay = relay_factory()
    status, body = _get(relay.http_url + "/health")
    assert status == 200
    assert set(json.loads(body)) == {"ok", "detail", "round_trip_ms", "relay_fingerprint"}


def test_metrics_on_their_own_listener(relay_factory: RelayFactory) -> None:
    relay = relay_factory(args=["--metrics-port", "0"])
    assert relay.metrics_url.startswith("http://127.0.0.1:")
    assert _get(relay.http_url + "/metrics")[0] == 404
    status, body = _get(relay.metrics_url)
    assert status == 200 and b"starmux_relay_connections_accepted_total" in body
    assert _get(relay.http_url + "/health")[0] == 200  # /health stays where it was


def test_livez_on_its_own_listener(relay_factory: RelayFactory) -> None:
    relay = relay_factory(args=["--livez-port", "0"])
    assert relay.livez_url.startswith("http://127.0.0.1:") and relay.livez_url.endswith("/livez")
    status, body = _get(relay.livez_url)
    assert (status, json.loads(body)) == (200, {"ok": True, "detail": "ok"})
    assert _get(relay.http_url + "/livez")[0] == 200  # and still on the main listener
    assert _get(relay.livez_url.replace("/livez", "/metrics"))[0] == 404  # nothing else


def test_a_taken_livez_port_stops_the_relay_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "starmux.cli", "relay", "serve", "--port", "0",
             "--data-dir", str(tmp_path / "relay"), "--livez-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result
    assert f"cannot listen for /livez on 127.0.0.1 port {port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_behind_a_bearer_token(relay_factory: RelayFactory, tmp_path: Path) -> None:
    for env in (
        {"STARMUX_RELAY_METRICS_TOKEN": "s3cret-scrape-token"},
        {"STARMUX_RELAY_METRICS_TOKEN_FILE": str(_token_file(tmp_path))},
    ):
        relay = relay_factory(env=env)
        url = relay.http_url + "/metrics"
        assert _get(url)[0] == 401
        assert _get(url, {"Authorization": "Bearer wrong"})[0] == 401
        status, body = _get(url, {"Authorization": "Bearer s3cret-scrape-token"})
        assert status == 200 and b"starmux_relay_refused_total" in body
        assert "s3cret" not in "".join(relay.output)


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "metrics-token"
    path.write_text("s3cret-scrape-token\n")
    path.chmod(0o600)
    return path


def test_the_metrics_token_is_not_a_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "starmux.cli", "relay", "serve", "--metrics-token", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "No such option" in result.stderr


async def test_the_registration_token_goes_to_a_private_file(relay_factory: RelayFactory) -> None:
    relay = relay_factory()
    assert relay.registration_token and relay.registration_token_file is not None
    assert relay.registration_token not in "".join(relay.output)
    assert stat.S_IMODE(relay.registration_token_file.stat().st_mode) == 0o600
    await register_controller(relay)  # the file's token works...
    assert not relay.registration_token_file.exists()  # ...once, and then it is gone


def test_the_plain_start_up_text_says_where_the_token_is(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "starmux.cli", "relay", "serve",
            "--port", str(free_port()), "--data-dir", str(data_dir), "--log-level", "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("listening on"):
                break
    finally:
        process.terminate()
        process.wait(timeout=15)
    text = "".join(lines)
    token = (data_dir / "registration-token").read_text().strip()
    assert token not in text
    assert str((data_dir / "registration-token").resolve()) in text


async def _ticket(relay_url: str, forwarded_for: str) -> Message:
    machine = RelayNode(Role.MACHINE)
    await machine.connect(relay_url, headers={"X-Forwarded-For": forwarded_for})
    reply = await machine.request(CreateTicket(1))
    await machine.close()
    return reply


async def test_forwarded_for_is_not_believed_by_default(relay_factory: RelayFactory) -> None:
    relay = relay_factory(env={"STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE_PER_IP": "1"})
    assert isinstance(ok(await _ticket(relay.url, "203.0.113.1")), TicketCreated)
    # A made-up address does not buy a fresh budget: the relay counts 127.0.0.1.
    reply = await _ticket(relay.url, "203.0.113.2")
    assert isinstance(reply, Failure) and reply.code == "rate-limited"


async def test_a_trusted_proxy_is_believed_and_ipv6_counts_per_64(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(
        env={
            "STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE_PER_IP": "1",
            "STARMUX_RELAY_TRUSTED_PROXIES": "127.0.0.1",
            "STARMUX_RELAY_CONNECTIONS_PER_IP": "2",
        }
    )
    assert isinstance(ok(await _ticket(relay.url, "2001:db8:1:2::1")), TicketCreated)
    # Another address of the same /64 shares its budget...
    reply = await _ticket(relay.url, "2001:db8:1:2:ffff::9")
    assert isinstance(reply, Failure) and reply.code == "rate-limited"
    # ...a neighbouring /64 does not, and neither does an IPv4 client.
    assert isinstance(ok(await _ticket(relay.url, "2001:db8:1:3::1")), TicketCreated)
    assert isinstance(ok(await _ticket(relay.url, "198.51.100.7")), TicketCreated)
    # The proxy's own sockets are not capped per address (it carries many clients);
    # each client behind it is, by its forwarded address.
    held = []
    for client in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        node = RelayNode(Role.MACHINE)
        await node.connect(relay.url, headers={"X-Forwarded-For": client})
        held.append(node)
    for _ in range(2):
        node = RelayNode(Role.MACHINE)
        await node.connect(relay.url, headers={"X-Forwarded-For": "198.51.100.9"})
        held.append(node)
    third = RelayNode(Role.MACHINE)
    third.ws = await websockets.connect(
        relay.url + "/v1/ws", additional_headers={"X-Forwarded-For": "198.51.100.9"}
    )
    assert await third.expect_close() == CloseCode.TOO_MANY_CONNECTIONS
    for node in held:
        await node.close()
