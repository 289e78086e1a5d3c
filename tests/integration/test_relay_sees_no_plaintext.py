"""The relay never sees session content: every byte it receives or sends is recorded.

A recording TCP proxy stands in front of a real relay, and both the controller and
the daemon are pointed at it (``ws://``, no TLS: anything not end-to-end encrypted
would be readable here). After pairing and one session whose title, command line,
working directory, output, checkpoint and approval all carry random markers, no
marker appears in the recording in any form, raw or in unmasked WebSocket payloads.
As a control, the recording does hold what the relay may see: the upgrade requests,
frames that parse, and the machine's and the controller's public keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from starmux.client.store import KEY_FILE as CONTROLLER_KEY_FILE
from starmux.daemon.store import KEY_FILE as MACHINE_KEY_FILE
from starmux.errors import FrameError
from starmux.frames import FrameType, parse_frame
from starmux.home import load_node_keys
from starmux.notify_push import open_notification

from ..timeouts import scaled
from .cluster import pending_checkpoint
from .daemon_process import DaemonProcess, run_cli
from .push_service import PushService, subscribe_device
from .relay_process import RelayProcess

# --- the recording proxy ---------------------------------------------------------------


@dataclass
class Connection:
    """One TCP connection through the proxy, as the relay saw it."""

    to_relay: bytearray = field(default_factory=bytearray)
    from_relay: bytearray = field(default_factory=bytearray)


class RecordingProxy:
    """Forwards TCP connections to the relay byte for byte, recording both directions.

    Runs its own event loop in a background thread (the CLI and daemon under test
    are separate processes, and the test body blocks on them).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections: list[Connection] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    def start(self) -> RecordingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(timeout=scaled(10))
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = self._loop.create_task(self._forward(client_reader, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        connection = Connection()
        self.connections.append(connection)
        try:
            relay_reader, relay = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client.close()
            return
        try:
            await asyncio.gather(
                _pump(client_reader, relay, connection.to_relay),
                _pump(relay_reader, client, connection.from_relay),
            )
        finally:
            for writer in (client, relay):
                writer.close()

    def recording(self) -> list[tuple[bytes, bytes]]:
        """A consistent copy of every connection so far: (to relay, from relay)."""

        async def copy() -> list[tuple[bytes, bytes]]:
            return [(bytes(c.to_relay), bytes(c.from_relay)) for c in self.connections]

        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(timeout=scaled(10))

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=scaled(10))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=scaled(10))
        self._loop.close()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sink: bytearray
) -> None:
    try:
        while data := await reader.read(65536):
            sink += data
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


# --- reading the recording -------------------------------------------------------------


@dataclass
class WebSocketStream:
    """One direction of a recorded connection: the HTTP head and the unmasked messages."""

    head: bytes
    messages: list[bytes]  # data messages (fragments joined), payloads unmasked
    control: list[bytes]  # ping/pong/close payloads


def parse_websocket(stream: bytes, *, from_client: bool) -> WebSocketStream:
    """Split a recorded TCP stream into its HTTP head and WebSocket messages (RFC 6455).

    Client frames are masked with a random key per frame, so plaintext sent by a
    node would not show in the raw bytes: this undoes the masking. A connection cut
    mid-frame leaves a truncated last frame, kept as far as it goes.
    """
    head, separator, rest = stream.partition(b"\r\n\r\n")
    assert separator, f"no HTTP head in {stream[:200]!r}"
    messages: list[bytes] = []
    control: list[bytes] = []
    partial = bytearray()
    position = 0
    while position + 2 <= len(rest):
        first, second = rest[position], rest[position + 1]
        position += 2
        # RSV bits would mean an extension (compression): plaintext could hide in it.
        assert first & 0x70 == 0, "a WebSocket extension is in use"
        assert bool(second & 0x80) == from_client, "masking is wrong for this direction"
        length = second & 0x7F
        if length >= 126:
            size = 2 if length == 126 else 8
            length = int.from_bytes(rest[position : position + size], "big")
            position += size
        key = rest[position : position + 4] if from_client else b""
        position += len(key)
        payload = rest[position : position + length]
        position += length
        if key:
            mask = (key * (len(payload) // 4 + 1))[: len(payload)]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
                len(payload), "big"
            )
        opcode = first & 0x0F
        if opcode >= 0x8:
            control.append(payload)
            continue
        partial += payload
        if first & 0x80:  # FIN
            messages.append(bytes(partial))
            partial.clear()
    if partial:
        messages.append(bytes(partial))
    return WebSocketStream(head, messages, control)


def forms(marker: str) -> dict[str, bytes]:
    """The marker as bytes in every encoding a leak could plausibly use."""
    raw = marker.encode()
    found = {
        "utf-8": raw,
        "utf-16-le": marker.encode("utf-16-le"),
        "utf-16-be": marker.encode("utf-16-be"),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
    }
    for offset in range(3):  # base64 depends on where in the encoded data the marker sits
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * offset + raw)
            # Keep only the characters that depend on the marker's bytes alone.
            found[f"{name}+{offset}"] = encoded[4 if offset else 0 : -4]
    return found


# --- the test ----------------------------------------------------------------------------


@pytest.fixture
def proxy(relay: RelayProcess) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(relay.port).start()
    yield recording
    recording.close()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def marker(kind: str) -> str:
    return f"{kind}{secrets.token_hex(10)}"


@pytest.fixture
def push_service() -> Iterator[PushService]:
    server = PushService()
    yield server
    server.close()


def test_relay_sees_no_plaintext(
    tmp_path: Path,
    relay: RelayProcess,
    proxy: RecordingProxy,
    daemons: list[DaemonProcess],
    push_service: PushService,
) -> None:
    markers = {
        kind: marker(kind)
        for kind in ("title", "argv", "cwd", "output", "cptitle", "cpbody", "reason")
    }
    controller = tmp_path / "controller"

    def cli(*args: str, timeout: float = 30.0) -> str:
        result = run_cli(controller, *args, timeout=timeout)
        assert result.returncode == 0, f"starmux {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    cli("init", "--relay", proxy.url, "--token", relay.registration_token or "", "--name", "laptop")
    daemon = DaemonProcess(
        tmp_path / "machine", proxy.url, extra_args=["--allow-root", str(tmp_path)]
    ).start()
    daemons.append(daemon)
    cli("pair", daemon.pairing_code(), "--yes")
    daemon.wait_for("connected to")
    # This device is pushed too (issue 16): the checkpoint's push crosses the relay.
    subscription = push_service.subscribe()
    subscribe_device(controller, subscription)

    workdir = tmp_path / f"project-{markers['cwd']}"
    workdir.mkdir()
    # The output marker is printed from its reverse, so only output can carry it.
    agent = (
        "import subprocess, sys\n"
        f"print({markers['output'][::-1]!r}[::-1], flush=True)\n"
        "r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'checkpoint',"
        f" {markers['cptitle']!r}, '--body', {markers['cpbody']!r}, '--timeout', '60'])\n"
        "sys.exit(r.returncode)\n"
    )
    started = json.loads(
        cli(
            "run", "--machine", "gpu-box", "--cwd", str(workdir), "--title", markers["title"],
            "--json", "--", sys.executable, "-c", agent, markers["argv"],
        )
    )  # fmt: skip
    session = str(started["session"])

    checkpoint = pending_checkpoint(cli, markers["cptitle"])
    assert checkpoint["body"] == markers["cpbody"]
    cli("approve", str(checkpoint["id"]), "--reason", markers["reason"])
    watched = run_cli(controller, "watch", session, timeout=30)
    assert watched.returncode == 0, watched.stderr
    assert markers["output"] in watched.stdout  # the output did travel, encrypted
    row = next(r for r in json.loads(cli("sessions", "--json")) if r["id"] == session)
    assert row["title"] == markers["title"] and row["cwd"] == str(workdir)
    assert row["status"] == "succeeded" and markers["argv"] in row["argv"]

    recording = proxy.recording()
    streams = [
        (parse_websocket(up, from_client=True), parse_websocket(down, from_client=False))
        for up, down in recording
        if up
    ]

    # Control: the recording is the real traffic, and shows what the relay may see.
    # The daemon, init, pair and the controller agent (every other command is its client).
    assert len(streams) >= 4, "expected the daemon, init, pair and the controller agent"
    for up, down in streams:
        assert up.head.startswith(b"GET /v1/ws HTTP/1.1\r\n")
        assert down.head.startswith(b"HTTP/1.1 101 ")
        assert b"sec-websocket-extensions" not in down.head.lower()
    frames = [parse_frame(m) for up, down in streams for m in (*up.messages, *down.messages)]
    assert {FrameType.CHALLENGE, FrameType.AUTH, FrameType.WELCOME, FrameType.DATA} <= {
        f.type for f in frames
    }
    assert sum(len(f.body) for f in frames if f.type is FrameType.DATA) > 1000
    payloads = b"\n".join(m for up, down in streams for m in (*up.messages, *down.messages))
    for key_file in (
        tmp_path / "machine" / MACHINE_KEY_FILE,
        controller / CONTROLLER_KEY_FILE,
    ):
        public_key = load_node_keys(key_file).sign_public
        assert public_key in payloads, f"{key_file.name}'s public key never crossed the relay"

    # The pushes did travel, and only the device opens them (control).
    pushes = push_service.wait_for(1, within=10.0)
    device = load_node_keys(controller / CONTROLLER_KEY_FILE)
    machine_key = load_node_keys(tmp_path / "machine" / MACHINE_KEY_FILE).sign_public
    notes = [
        open_notification(device, sealed, machine_known=lambda key: key == machine_key)
        for _, _, sealed in push_service.plaintexts
    ]
    assert notes[0].title == markers["cptitle"] and notes[0].body == markers["cpbody"]

    haystacks = {
        # What the relay sent to the push service, and what the service decrypted.
        "push POSTs": b"\n".join(p.body + repr(p.headers).encode() for p in pushes),
        "push outer plaintexts": b"\n".join(p[2] for p in push_service.plaintexts),
        "raw bytes": b"\n".join(part for pair in recording for part in pair),
        "unmasked payloads": payloads,
        "control frames": b"\n".join(
            c for up, down in streams for c in (*up.control, *down.control)
        ),
    }
    # Control of the search itself: the registration token is meant for the relay, so
    # it crosses in clear, but masked: found only once the frames are unmasked.
    token = relay.registration_token
    assert token is not None
    assert find_leaks({"token": token}, haystacks) == ["token as utf-8 in unmasked payloads"]

    # The test: no marker, in any form, in anything the relay received or sent.
    leaks = find_leaks(markers, haystacks)
    assert not leaks, leaks


def find_leaks(markers: dict[str, str], haystacks: dict[str, bytes]) -> list[str]:
    return [
        f"{kind} as {form} in {where}"
        for kind, value in markers.items()
        for form, needle in forms(value).items()
        for where, haystack in haystacks.items()
        if needle in haystack
    ]


def test_parse_websocket_unmasks_and_joins_fragments() -> None:
    key = b"\x01\x02\x03\x04"
    payload = b"hello, relay"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    stream = (
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n"
        + bytes([0x02, 0x80 | 5]) + key + masked[:5]  # binary, not FIN
        + bytes([0x89, 0x80]) + key  # a ping in between
        + bytes([0x80, 0x80 | 7]) + key[1:] + key[:1] + bytes(  # continuation, FIN
            b ^ (key[1:] + key[:1])[i % 4] for i, b in enumerate(payload[5:])
        )
    )  # fmt: skip
    parsed = parse_websocket(stream, from_client=True)
    assert parsed.messages == [payload]
    assert parsed.control == [b""]
    with pytest.raises(FrameError):
        parse_frame(parsed.messages[0])
