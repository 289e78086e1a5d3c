"""Experiments on the relay for ``bench/storm.py --relay-patch NAME,...`` (never by default).

The relay then starts through :data:`LAUNCHER`, which applies the named patches to
the relay's modules in its own process before running ``starmux relay serve``; each
patch is what a proposed product change would do, so the storm can measure the
change before anyone makes it:

- ``uvloop``: asyncio's loop policy is uvloop. ``starmux relay serve`` calls
  ``asyncio.run``, which builds a default loop (uvicorn's ``loop="uvloop"`` only
  applies through ``uvicorn.Server.run``).
- ``timing``: registry calls are timed (including the wait for the registry's lock)
  and the figures written as JSON to ``$STORM_PATCH_STATS`` soon after.
- ``one-lookup``: authenticating a machine costs one registry round trip, not two
  calls of three thread hops each: ``is_revoked`` runs the ``machine`` query (which
  already joins ``revocations``) with ``execute_fetchall`` (one hop) and hands the
  row to the ``machine`` call that follows it.
- ``preload``: the registry keeps every machine's (account, revoked) in memory,
  loaded with one query on the first lookup, kept current by grant and revoke;
  authentication then never waits for SQLite.
- ``presence``: the routing table keeps each account's *controllers* apart, and a
  machine's presence goes to them without copying and scanning every peer of the
  account (today O(machines) per connect and per disconnect: O(N²) per storm).
- ``touch-batch``: ``touch_machine`` (one write transaction per closed machine
  connection) only notes the time; the notes are written in one transaction a
  second, and at close.
- ``key-cache``: ``NodeKeys`` derives its Ed25519 key pair once, not on every
  ``sign`` and ``sign_public`` (the endpoint reads ``probe_keys.sign_public`` on
  every authentication and signs every welcome).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

NAMES = ("uvloop", "timing", "one-lookup", "preload", "presence", "touch-batch", "key-cache")
ENV = "STORM_RELAY_PATCHES"
STATS_ENV = "STORM_PATCH_STATS"
LAUNCHER = (
    "import runpy, bench.storm_patches as p; p.install(); "
    "runpy.run_module('starmux.cli', run_name='__main__')"
)

Method = Callable[..., Awaitable[Any]]


def install() -> None:
    names = [n for n in os.environ.get(ENV, "").split(",") if n]
    if "uvloop" in names:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if "one-lookup" in names:
        _one_lookup()
    if "preload" in names:
        _preload()
    if "presence" in names:
        _presence()
    if "touch-batch" in names:
        _touch_batch()
    if "key-cache" in names:
        _key_cache()
    if "timing" in names:  # last, so it times the patched methods
        _timing(Path(os.environ[STATS_ENV]))


def _timing(path: Path) -> None:
    from starmux.relay.sqlite_registry import SqliteRegistry

    stats: dict[str, list[float]] = {}
    flush: list[asyncio.TimerHandle] = []

    def write() -> None:
        flush.clear()
        path.write_text(json.dumps(stats))

    def timed(name: str, method: Method) -> Method:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                stats.setdefault(name, []).append(time.perf_counter() - started)
                if not flush:  # written 0.2 s after a call, at most 5 times a second
                    flush.append(asyncio.get_running_loop().call_later(0.2, write))

        return wrapper

    for name in ("machine", "is_revoked", "controller", "touch_machine", "machines_of"):
        setattr(SqliteRegistry, name, timed(name, getattr(SqliteRegistry, name)))


def _one_lookup() -> None:
    from starmux.relay import sqlite_registry
    from starmux.relay.registry import MachineRecord
    from starmux.relay.sqlite_registry import _SELECT_MACHINE, SqliteRegistry

    looked_up: dict[bytes, MachineRecord | None] = {}
    original_machine = SqliteRegistry.machine

    async def is_revoked(self: SqliteRegistry, key: bytes) -> bool:
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(_SELECT_MACHINE + " WHERE m.key = ?", (key,)))
        record = sqlite_registry._machine(rows[0]) if rows else None
        if record is None:
            async with self._reading() as db:
                sql = "SELECT 1 FROM revocations WHERE key = ?"
                return bool(list(await db.execute_fetchall(sql, (key,))))
        looked_up[key] = record
        return record.revoked_at is not None

    async def machine(self: SqliteRegistry, key: bytes) -> MachineRecord | None:
        if key in looked_up:
            return looked_up.pop(key)
        return await original_machine(self, key)

    SqliteRegistry.is_revoked = is_revoked  # type: ignore[method-assign]
    SqliteRegistry.machine = machine  # type: ignore[method-assign]


def _preload() -> None:
    from starmux.relay.registry import MachineRecord
    from starmux.relay.sqlite_registry import SqliteRegistry

    table: dict[bytes, tuple[bytes, bool]] = {}  # key → (account, revoked)
    loaded = asyncio.Event()
    loading: list[bool] = []
    original = {n: getattr(SqliteRegistry, n) for n in ("grant_machine", "revoke_machine")}

    async def load(self: SqliteRegistry) -> None:
        if loading:
            await loaded.wait()
            return
        loading.append(True)
        sql = (
            "SELECT m.key, m.account, r.key IS NOT NULL FROM machines AS m"
            " LEFT JOIN revocations AS r ON r.key = m.key"
        )
        async with self._reading() as db:
            rows = await db.execute_fetchall(sql)
            revoked = await db.execute_fetchall("SELECT key FROM revocations")
        for key, account, is_revoked in rows:
            table[bytes(key)] = (bytes(account), bool(is_revoked))
        for (key,) in revoked:
            table.setdefault(bytes(key), (b"", True))
        loaded.set()

    async def is_revoked(self: SqliteRegistry, key: bytes) -> bool:
        await load(self)
        entry = table.get(key)
        return entry is not None and entry[1]

    async def machine(self: SqliteRegistry, key: bytes) -> MachineRecord | None:
        # The endpoint reads only ``account`` from it; the record's other fields are
        # not kept in memory (a real change would keep what the endpoint needs).
        await load(self)
        entry = table.get(key)
        if entry is None or not entry[0]:
            return None
        return MachineRecord(key, entry[0], b"", b"", b"", 0.0, 0.0, None,
                             time.time() if entry[1] else None)  # fmt: skip

    async def grant_machine(self: SqliteRegistry, **kwargs: Any) -> MachineRecord:
        record: MachineRecord = await original["grant_machine"](self, **kwargs)
        table[record.key] = (record.account, False)
        return record

    async def revoke_machine(self: SqliteRegistry, key: bytes, **kwargs: Any) -> bool:
        done: bool = await original["revoke_machine"](self, key, **kwargs)
        if done:
            table[key] = (table.get(key, (b"", True))[0], True)
        return done

    SqliteRegistry.is_revoked = is_revoked  # type: ignore[method-assign]
    SqliteRegistry.machine = machine  # type: ignore[method-assign]
    SqliteRegistry.grant_machine = grant_machine  # type: ignore[method-assign]
    SqliteRegistry.revoke_machine = revoke_machine  # type: ignore[method-assign]


def _presence() -> None:
    from starmux.control import CONTROL, Presence, SessionStatus
    from starmux.frames import FrameType, encode_frame
    from starmux.relay import endpoint, requests
    from starmux.relay.peer import Peer
    from starmux.relay.routing import LocalRoutingTable
    from starmux.relay.state import RelayState

    controllers: dict[bytes, dict[bytes, Peer]] = {}  # account → key → controller peer
    attach, detach = LocalRoutingTable.attach, LocalRoutingTable.detach

    def patched_attach(self: LocalRoutingTable, peer: Peer) -> Peer | None:
        old = attach(self, peer)
        if peer.account and peer.status is SessionStatus.CONTROLLER:
            controllers.setdefault(peer.account, {})[peer.key] = peer
        return old

    def patched_detach(self: LocalRoutingTable, peer: Peer) -> bool:
        gone = detach(self, peer)
        if gone and peer.status is SessionStatus.CONTROLLER:
            members = controllers.get(peer.account, {})
            members.pop(peer.key, None)
            if not members:
                controllers.pop(peer.account, None)
        return gone

    def announce_presence(state: RelayState, machine: Peer, *, online: bool) -> None:
        if machine.status is not SessionStatus.MACHINE:
            return
        listeners = controllers.get(machine.account)
        if not listeners:
            return
        frame = encode_frame(
            FrameType.PRESENCE, machine.key, CONTROL.encode(Presence(online, state.clock()))
        )
        for other in list(listeners.values()):
            other.deliver(frame, time.perf_counter())

    LocalRoutingTable.attach = patched_attach  # type: ignore[method-assign]
    LocalRoutingTable.detach = patched_detach  # type: ignore[method-assign]
    requests.announce_presence = announce_presence
    setattr(endpoint, "announce_presence", announce_presence)  # noqa: B010 (not exported)


def _touch_batch() -> None:
    from starmux.relay.sqlite_registry import SqliteRegistry

    seen: dict[bytes, float] = {}
    flusher: list[asyncio.Task[None]] = []
    close = SqliteRegistry.close

    async def write(self: SqliteRegistry) -> None:
        if not seen:
            return
        rows = [(now, now, key) for key, now in seen.items()]
        seen.clear()
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE machines SET last_seen = max(coalesce(last_seen, ?), ?) WHERE key = ?",
                rows,
            )

    async def flush_every_second(self: SqliteRegistry) -> None:
        while True:
            await asyncio.sleep(1.0)
            await write(self)

    async def touch_machine(self: SqliteRegistry, key: bytes, *, now: float) -> None:
        seen[key] = max(now, seen.get(key, now))
        if not flusher:
            flusher.append(asyncio.get_running_loop().create_task(flush_every_second(self)))

    async def patched_close(self: SqliteRegistry) -> None:
        for task in flusher:
            task.cancel()
        if self._db is not None:
            await write(self)
        await close(self)

    SqliteRegistry.touch_machine = touch_machine  # type: ignore[method-assign]
    SqliteRegistry.close = patched_close  # type: ignore[method-assign]


def _key_cache() -> None:
    import functools

    import nacl.signing

    from starmux.identity import NodeKeys

    @functools.lru_cache(maxsize=64)
    def signing_key(seed: bytes) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(seed)

    @functools.lru_cache(maxsize=64)
    def sign_public(seed: bytes) -> bytes:
        return bytes(signing_key(seed).verify_key)

    NodeKeys.signing_key = property(lambda self: signing_key(self.signing_seed))  # type: ignore[assignment,method-assign]
    NodeKeys.sign_public = property(lambda self: sign_public(self.signing_seed))  # type: ignore[assignment,method-assign]
