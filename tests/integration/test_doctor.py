"""`starmux doctor` against a healthy relay, an HTTP-only server and an impostor relay."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RelayFactory
from .daemon_process import run_cli
from .relay_process import RelayProcess


def _doctor(home: Path) -> tuple[int, dict[str, dict[str, object]]]:
    result = run_cli(home, "doctor", "--json")
    assert result.stdout.startswith("["), result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    return result.returncode, checks


def _init(tmp_path: Path, relay: RelayProcess) -> Path:
    home = tmp_path / "controller"
    result = run_cli(home, "init", "--relay", relay.url, "--token", relay.registration_token or "")
    assert result.returncode == 0, result.stderr
    return home


def test_healthy_relay_is_all_green(tmp_path: Path, relay: RelayProcess) -> None:
    home = _init(tmp_path, relay)
    code, checks = _doctor(home)
    assert code == 0, checks
    assert all(c["ok"] for c in checks.values())
    assert "signature auth ok" in str(checks["relay reachable"]["detail"])
    assert "through the relay" in str(checks["routed round trip"]["detail"])
    assert {"home permissions", "key and database permissions", "clock", "outbox"} <= set(checks)
    human = run_cli(home, "doctor")
    assert human.returncode == 0 and "FAIL" not in human.stdout


@pytest.fixture
def http_only() -> Iterator[int]:
    """A web server that answers HTTP 200 and knows nothing of WebSockets."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_http_without_websockets_fails_with_the_right_hint(
    tmp_path: Path, relay_factory: RelayFactory, http_only: int
) -> None:
    relay = relay_factory()
    home = _init(tmp_path, relay)
    relay.kill()
    # The controller's relay URL now leads to a plain web server on the same port?
    # Point a fresh controller config at the HTTP server instead.
    import sqlite3

    with sqlite3.connect(home / "controller.sqlite3") as db:
        db.execute(
            "UPDATE settings SET value = ? WHERE name = 'relay_url'",
            (f"ws://127.0.0.1:{http_only}".encode(),),
        )
    code, checks = _doctor(home)
    assert code == 1
    check = checks["relay reachable"]
    assert check["ok"] is False
    assert "refused the WebSocket upgrade" in str(check["detail"])
    assert "forwards WebSocket upgrades" in str(check["hint"])


def test_wrong_relay_key_fails(tmp_path: Path, relay_factory: RelayFactory) -> None:
    relay = relay_factory()
    home = _init(tmp_path, relay)
    relay.kill()
    relay_factory(data_dir=tmp_path / "impostor", port=relay.port)
    code, checks = _doctor(home)
    assert code == 1
    check = checks["relay identity"]
    assert check["ok"] is False and "key changed" in str(check["detail"])


def test_loose_key_permissions_are_reported(tmp_path: Path, relay: RelayProcess) -> None:
    home = _init(tmp_path, relay)
    (home / "controller.key").chmod(0o644)
    code, checks = _doctor(home)
    assert code == 1
    assert "controller.key (644)" in str(checks["key and database permissions"]["detail"])
