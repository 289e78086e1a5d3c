"""The revocation stream between two buses on a real Redis, fed by the PostgreSQL
registry: device removals travel it like machine revocations, each written to
PostgreSQL before it is streamed, and each read as its own kind. A machine
revocation carries the controller's signed statement, stored in PostgreSQL too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from starmux.relay.bus import MAX_PROOF, PeerEntry
from starmux.relay.pg_registry import PostgresRegistry
from starmux.relay.redis_bus import RedisBus
from starmux.relay.registry import ControllerRecord, DeviceChange, DeviceLogRow
from tests.timeouts import scaled
from tests.unit.registry_backends import POSTGRES_URL, fresh_schema

from .services import RedisServer

T0 = 1_700_000_000.0
ACCOUNT = bytes(range(16))
OWNER = b"O" * 32
PHONE = b"P" * 32
MACHINE = b"M" * 32
PROOF = b"the controller's signed machine-revocation"


class Heard:
    """A node's side of the bus (relay.bus.BusListener) that records the stream."""

    def __init__(self) -> None:
        self.entries: asyncio.Queue[tuple[str, bytes, bytes, bytes]] = asyncio.Queue()

    def on_peer_message(self, key: bytes, message: bytes) -> None: ...
    def on_undelivered(self, key: bytes, message: bytes) -> None: ...
    def on_presence(self, entry: PeerEntry, online: bool) -> None: ...
    def on_snapshot(self, entries: Sequence[PeerEntry], nodes: Sequence[str] = ()) -> None: ...
    def on_node_gone(self, node: str) -> None: ...
    def on_lost(self) -> None: ...
    async def on_reconnected(self) -> None: ...

    def on_revocation(self, key: bytes, account: bytes, proof: bytes) -> None:
        self.entries.put_nowait(("machine revoked", key, account, proof))

    def on_device_removed(self, key: bytes, account: bytes) -> None:
        self.entries.put_nowait(("device removed", key, account, b""))

    async def next(self) -> tuple[str, bytes, bytes, bytes]:
        return await asyncio.wait_for(self.entries.get(), scaled(10))


@pytest.fixture
async def registry() -> AsyncIterator[PostgresRegistry]:
    async for schema in fresh_schema():
        registry = PostgresRegistry(POSTGRES_URL, schema=schema, pool_size=2)
        await registry.open()
        yield registry
        await registry.close()


async def test_device_removals_are_committed_then_streamed_to_every_node(
    registry: PostgresRegistry, redis_server: RedisServer
) -> None:
    writer, reader = RedisBus(redis_server.url), RedisBus(redis_server.url)
    heard = Heard()
    await writer.start(Heard())
    await reader.start(heard)
    committed: list[bool] = []

    async def stream(key: bytes, account: bytes) -> None:
        committed.append(await registry.is_removed_device(key))  # PostgreSQL first
        await writer.append_device_removal(key, account)

    registry.on_device_removed = stream
    try:
        await registry.create_account(
            controller_key=OWNER, controller_card=b"o", account=ACCOUNT, token_hash=None, now=T0
        )
        phone = ControllerRecord(PHONE, ACCOUNT, b"phone-card", T0)
        first = [DeviceLogRow(0, b"h0", b"e0", OWNER, T0), DeviceLogRow(1, b"h1", b"e1", OWNER, T0)]
        await registry.append_device_log(
            ACCOUNT, after_seq=-1, by=OWNER, now=T0, rows=first, change=DeviceChange((phone,), ())
        )
        assert committed == []  # an add is not streamed
        await registry.append_device_log(
            ACCOUNT, after_seq=1, by=OWNER, now=T0 + 1,
            rows=[DeviceLogRow(2, b"h2", b"e2", OWNER, T0 + 1)],
            change=DeviceChange((), (PHONE,)),
        )  # fmt: skip
        assert committed == [True]
        assert await heard.next() == ("device removed", PHONE, ACCOUNT, b"")
        assert await registry.removed_among([OWNER, PHONE, MACHINE]) == {PHONE}
        assert await registry.removed_among([]) == set()

        # A machine revocation on the same stream keeps its own kind and carries
        # its proof; an entry from a node that predates kinds (no "kind" field)
        # or proofs reads as a revocation without one, and so does an overlong one.
        await writer.append_revocation(MACHINE, ACCOUNT, PROOF)
        assert await heard.next() == ("machine revoked", MACHINE, ACCOUNT, PROOF)
        assert writer._client is not None
        await writer._client.xadd(writer._stream, {"key": MACHINE, "account": ACCOUNT})
        assert await heard.next() == ("machine revoked", MACHINE, ACCOUNT, b"")
        overlong = {"key": MACHINE, "account": ACCOUNT, "proof": b"p" * (MAX_PROOF + 1)}
        await writer._client.xadd(writer._stream, overlong)  # type: ignore[arg-type]
        assert await heard.next() == ("machine revoked", MACHINE, ACCOUNT, b"")
        assert reader.counters()["device_removals_read"] == 1
        assert reader.counters()["revocations_read"] == 3
        assert reader.counters()["proofs_refused"] == 1
    finally:
        await reader.close()
        await writer.close()
