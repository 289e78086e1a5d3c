"""The cluster bus on Redis (redis.asyncio). Interface and message codec: :mod:`relay.bus`.

Keys and channels (``P`` = the prefix, ``starmux:`` by default):

- ``P:peer:<key hex>``   pub/sub channel to whichever node holds that key
- ``P:presence``         pub/sub: ``U``/``D`` + a :class:`PeerEntry` (up / down)
- ``P:peers:<node>``     hash key → entry: the node's snapshot, for nodes that start later
- ``P:alive:<node>``     heartbeat, ``SET ... PX`` every second, TTL three seconds
- ``P:revocations``      stream of machine revocations and device removals
                         (field ``kind``), trimmed to the last ~10,000 entries

One ordered outbound queue per node, drained by one task in pipelines: a pipeline
is sent only after the previous one was answered, so Redis executes everything in
the order the node asked. Holding a key subscribes to its channel and waits for
the subscription to be confirmed *before* announcing it (see :mod:`relay.bus`).

When Redis goes away every task stops, ``connected`` turns False (``/health``
503), frames are dropped (counted), and a supervisor reconnects with backoff; it
then re-subscribes, re-announces every held key, re-reads the snapshot and tells
the listener, which re-reads revocations from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from starmux.errors import RemoteProtocolError

from .bus import DEVICE_REMOVED, MACHINE_REVOKED, MAX_PROOF, BusListener, PeerEntry
from .pg_schema import redact_url

log = logging.getLogger("starmux.relay.cluster")

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL_MS = 3000
STREAM_MAX = 10_000
MAX_QUEUE = 100_000  # outbound messages; past it frames are dropped (at most once)
BATCH = 512
SUBSCRIBE_TIMEOUT = 5.0
_LOST = (RedisError, OSError, TimeoutError, RemoteProtocolError)


async def _bounded(what: str, step: Awaitable[object], seconds: float = 2.0) -> None:
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.warning("cluster bus: %s took over %s s; going on", what, seconds)
    except Exception:  # noqa: S110 - tearing down: whatever failed is being dropped
        pass


class RedisBus:
    """See the module docstring and :class:`relay.bus.ClusterBus`."""

    def __init__(self, url: str, *, prefix: str = "starmux", node_id: str | None = None) -> None:
        self._url = url
        self._prefix = prefix
        self.node_id = node_id or secrets.token_hex(6)
        self._listener: BusListener | None = None
        self._client: redis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._held: dict[bytes, PeerEntry] = {}
        self._queue: deque[tuple[str, Any, bytes]] = deque()
        self._wake = asyncio.Event()
        self._subscribed: dict[bytes, asyncio.Future[None]] = {}
        self._nodes: set[str] = set()  # other nodes whose peers we know of
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._stream_id = "$"
        self._connected = False
        self._closing = False
        self._detail = "not started"
        self._counts: Counter[str] = Counter()
        self._presence = f"{prefix}:presence".encode()
        self._stream = f"{prefix}:revocations"

    # --- names -------------------------------------------------------------------
    def _channel(self, key: bytes) -> bytes:
        return f"{self._prefix}:peer:{key.hex()}".encode()

    def _peers_key(self, node: str) -> str:
        return f"{self._prefix}:peers:{node}"

    def _alive_key(self, node: str) -> str:
        return f"{self._prefix}:alive:{node}"

    # --- state -------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def detail(self) -> str:
        return self._detail

    def counters(self) -> dict[str, int]:
        return {**self._counts, "nodes": len(self._nodes) + 1}

    # --- lifecycle ---------------------------------------------------------------
    async def start(self, listener: BusListener) -> None:
        self._listener = listener
        try:
            await self._connect(first=True)
        except _LOST as exc:
            await self._teardown()
            raise ConnectionError(
                f"cannot reach the cluster bus (Redis at {redact_url(self._url)}): {exc}"
            ) from exc
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
        if self._connected and self._client is not None:
            # Withdraw at once rather than let other nodes wait for the heartbeat TTL:
            # everything this node ever announced, as its snapshot says (peers that
            # left during the shutdown may still wait in the outbound queue).
            with contextlib.suppress(*_LOST):
                async with asyncio.timeout(2.0):
                    snapshot: dict[Any, Any] = await self._client.hgetall(
                        self._peers_key(self.node_id)
                    )
                    pipe = self._client.pipeline(transaction=False)
                    pipe.delete(self._peers_key(self.node_id), self._alive_key(self.node_id))
                    for raw in snapshot.values():
                        pipe.publish(self._presence, b"D" + raw)
                    await pipe.execute()
        self._held.clear()
        await self._teardown()
        self._detail = "closed"

    async def _teardown(self) -> None:
        """Stop every task and drop both connections. Bounded: a connection to a Redis
        that vanished must not hold up a shutdown or a reconnection."""
        self._connected = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2.0)
            if stuck:
                log.warning("cluster bus: %d tasks did not stop within 2 s", len(stuck))
        self._tasks.clear()
        for future in self._subscribed.values():
            future.cancel()
        self._subscribed.clear()
        self._queue.clear()
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await _bounded("closing the subscription", pubsub.aclose())  # type: ignore[no-untyped-call]
        if self._client is not None:
            client, self._client = self._client, None
            await _bounded("closing the connection pool", client.aclose())

    async def _connect(self, *, first: bool) -> None:
        self._client = redis.Redis.from_url(
            self._url, socket_connect_timeout=2.0, socket_keepalive=True
        )
        self._pubsub = self._client.pubsub()
        await self._client.ping()
        loop = asyncio.get_running_loop()
        # The reader starts after the first SUBSCRIBE is sent (listen() ends at once
        # on a connection with no subscription) and before its confirmation is read.
        await self._subscribe(
            [self._presence, *(self._channel(k) for k in self._held)],
            then=lambda: self._tasks.append(loop.create_task(self._read_pubsub())),
        )
        if first:
            last: Any = await self._client.xrevrange(self._stream, count=1)
            self._stream_id = last[0][0].decode() if last else "0-0"
        pipe = self._client.pipeline(transaction=False)
        pipe.delete(self._peers_key(self.node_id))
        if self._held:
            pipe.hset(
                self._peers_key(self.node_id),
                mapping={key: entry.encode() for key, entry in self._held.items()},
            )
        pipe.set(self._alive_key(self.node_id), b"1", px=HEARTBEAT_TTL_MS)
        for entry in self._held.values():
            pipe.publish(self._presence, b"U" + entry.encode())
        await pipe.execute()
        entries = await self._snapshot()
        self._connected = True
        self._detail = "ok"
        assert self._listener is not None
        self._listener.on_snapshot(entries, sorted(self._nodes))
        self._tasks += [
            loop.create_task(self._drain()),
            loop.create_task(self._heartbeat()),
            loop.create_task(self._read_revocations()),
        ]
        if not first:
            self._counts["reconnects"] += 1
            await self._listener.on_reconnected()

    async def _snapshot(self) -> list[PeerEntry]:
        """Every peer of every live node (a node is live while its heartbeat is)."""
        assert self._client is not None
        self._nodes = set()
        async for name in self._client.scan_iter(match=self._alive_key("*"), count=1000):
            node = name.decode().rsplit(":", 1)[1]
            if node != self.node_id:
                self._nodes.add(node)
        entries: list[PeerEntry] = []
        for node in sorted(self._nodes):
            held: dict[Any, Any] = await self._client.hgetall(self._peers_key(node))
            entries.extend(PeerEntry.decode(raw) for raw in held.values())
        return entries

    async def _supervise(self) -> None:
        """Wait for a task to fail, then reconnect with backoff, for ever."""
        while not self._closing:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            failure = next((t.exception() for t in done if not t.cancelled()), None)
            self._detail = f"bus lost: {type(failure).__name__}: {failure}"[:200]
            log.warning("cluster bus lost (%s); reconnecting", self._detail)
            self._counts["disconnects"] += 1
            if self._listener is not None:
                self._listener.on_lost()
            await self._teardown()
            delay = 0.1
            while not self._closing:
                try:
                    await self._connect(first=False)
                    log.warning("cluster bus back")
                    break
                except _LOST as exc:
                    await self._teardown()
                    self._detail = f"bus unreachable: {type(exc).__name__}: {exc}"[:200]
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)

    # --- subscriptions -----------------------------------------------------------
    async def _subscribe(
        self, channels: Sequence[bytes], then: Callable[[], object] | None = None
    ) -> None:
        """Subscribe and wait until Redis confirmed the last one (they come in order)."""
        if not channels:
            return
        assert self._pubsub is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribed[channels[-1]] = future
        await self._pubsub.subscribe(*channels)
        if then is not None:
            then()
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
            await future

    async def _read_pubsub(self) -> None:
        assert self._pubsub is not None and self._listener is not None
        listener = self._listener
        prefix_len = len(self._channel(b""))
        counts = self._counts
        async for message in self._pubsub.listen():
            kind = message["type"]
            channel: bytes = message["channel"]
            if kind == "message":
                data: bytes = message["data"]
                if channel == self._presence:
                    entry = PeerEntry.decode(data[1:])
                    if entry.node != self.node_id:
                        if data[:1] == b"U":
                            self._nodes.add(entry.node)
                        listener.on_presence(entry, data[:1] == b"U")
                else:
                    counts["received"] += 1
                    listener.on_peer_message(bytes.fromhex(channel[prefix_len:].decode()), data)
            elif kind == "subscribe":
                future = self._subscribed.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(None)

    # --- outbound ----------------------------------------------------------------
    def hold(self, entry: PeerEntry) -> None:
        self._held[entry.key] = entry
        if self._connected:
            self._enqueue(("hold", entry, b""))

    def release(self, key: bytes) -> None:
        entry = self._held.pop(key, None)
        if entry is not None and self._connected:
            self._enqueue(("release", entry, b""))

    def send(self, key: bytes, message: bytes) -> bool:
        if not self._connected or len(self._queue) >= MAX_QUEUE:
            self._counts["dropped"] += 1
            return False
        self._enqueue(("pub", key, message))
        return True

    def _enqueue(self, item: tuple[str, Any, bytes]) -> None:
        self._queue.append(item)
        self._wake.set()

    async def _drain(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                kind = queue[0][0]
                batch: list[tuple[str, Any, bytes]] = []
                while queue and queue[0][0] == kind and len(batch) < BATCH:
                    batch.append(queue.popleft())
                if kind == "pub":
                    await self._publish(batch)
                elif kind == "hold":
                    await self._announce([item[1] for item in batch])
                else:
                    await self._withdraw([item[1] for item in batch])

    async def _publish(self, batch: list[tuple[str, Any, bytes]]) -> None:
        assert self._client is not None and self._listener is not None
        pipe = self._client.pipeline(transaction=False)
        for _, key, message in batch:
            pipe.publish(self._channel(key), message)
        receivers = await pipe.execute()
        self._counts["published"] += len(batch)
        for (_, key, message), count in zip(batch, receivers, strict=True):
            if not count:
                self._counts["undelivered"] += 1
                self._listener.on_undelivered(key, message)

    async def _announce(self, entries: list[PeerEntry]) -> None:
        assert self._client is not None
        await self._subscribe([self._channel(e.key) for e in entries])
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._peers_key(self.node_id), mapping={e.key: e.encode() for e in entries})
        for entry in entries:
            pipe.publish(self._presence, b"U" + entry.encode())
        await pipe.execute()

    async def _withdraw(self, entries: list[PeerEntry]) -> None:
        assert self._client is not None and self._pubsub is not None
        # A key released and held again in the same moment stays subscribed.
        gone = [e for e in entries if e.key not in self._held]
        if not gone:
            return
        await self._pubsub.unsubscribe(*(self._channel(e.key) for e in gone))
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(self._peers_key(self.node_id), *(e.key for e in gone))
        for entry in gone:
            pipe.publish(self._presence, b"D" + entry.encode())
        await pipe.execute()

    # --- heartbeat and failure detection -----------------------------------------
    async def _heartbeat(self) -> None:
        assert self._client is not None and self._listener is not None
        # Right after (re)connecting, other nodes may still be reconnecting too
        # (a Redis restart drops every heartbeat): do not declare them dead yet.
        grace = asyncio.get_running_loop().time() + HEARTBEAT_TTL_MS / 1000
        while True:
            await self._client.set(self._alive_key(self.node_id), b"1", px=HEARTBEAT_TTL_MS)
            nodes = sorted(self._nodes)
            if nodes and asyncio.get_running_loop().time() >= grace:
                alive = await self._client.mget([self._alive_key(n) for n in nodes])
                for node, beat in zip(nodes, alive, strict=True):
                    if beat is None:
                        self._nodes.discard(node)
                        self._counts["nodes_gone"] += 1
                        log.warning(
                            "cluster node %s stopped answering; its peers are offline", node
                        )
                        await self._client.delete(self._peers_key(node))
                        self._listener.on_node_gone(node)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    # --- revocations -------------------------------------------------------------
    async def append_revocation(self, key: bytes, account: bytes, proof: bytes) -> None:
        await self._append(MACHINE_REVOKED, key, account, proof)

    async def append_device_removal(self, key: bytes, account: bytes) -> None:
        await self._append(DEVICE_REMOVED, key, account)

    async def _append(self, kind: bytes, key: bytes, account: bytes, proof: bytes = b"") -> None:
        if self._client is None or not self._connected:
            self._counts["revocations_not_streamed"] += 1
            return  # the registry has it; every node re-reads it when the bus is back
        fields: dict[Any, Any] = {"key": key, "account": account, "kind": kind}
        if proof:
            fields["proof"] = proof
        try:
            await self._client.xadd(self._stream, fields, maxlen=STREAM_MAX, approximate=True)
        except _LOST:
            self._counts["revocations_not_streamed"] += 1

    async def _read_revocations(self) -> None:
        assert self._client is not None and self._listener is not None
        listener = self._listener
        while True:
            batches: Any = await self._client.xread({self._stream: self._stream_id}, block=1000)
            for _, entries in batches:
                for entry_id, fields in entries:
                    self._stream_id = entry_id.decode()
                    key, account = bytes(fields[b"key"]), bytes(fields[b"account"])
                    kind = fields.get(b"kind", MACHINE_REVOKED)
                    if kind == DEVICE_REMOVED:
                        self._counts["device_removals_read"] += 1
                        listener.on_device_removed(key, account)
                    else:
                        self._counts["revocations_read"] += 1
                        proof = bytes(fields.get(b"proof", b""))
                        if len(proof) > MAX_PROOF:
                            self._counts["proofs_refused"] += 1
                            proof = b""
                        listener.on_revocation(key, account, proof)
