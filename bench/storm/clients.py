"""A load process of the reconnect storm: many paired machines, each as the daemon connects.

``python -m bench.storm.clients --url URL --relay-key HEX --salt HEX --first I --count N``

Each machine (keys derived from the salt and its index, see :func:`machine_keys`) pumps
the daemon's own reconnect policy, the core state machine :class:`starmux.reconnect.Reconnect`
(as ``daemon/runtime.py`` does: ``connect_failure``/``close_failure`` classify, the policy
answers Retry/Stop), through the shipped :class:`starmux.node.link.RelayLink` (WebSocket +
:class:`starmux.relay_auth.NodeAuth` against the pinned relay key). Nothing of the
policy is written here again; the ``refused-flat`` and ``eager`` policies only replace
the delay, to measure a proposal against it.

Only the daemon's own disk I/O (reading its key file and pinned key from SQLite
before each attempt) is left out: it costs the relay nothing.

Commands (stdin, JSON lines) and events (stdout):

- at start, every machine connects once (at most ``--ramp`` at a time); then
  ``{"event": "connected"}``.
- ``{"cmd": "arm", "since": T, "policy": P}``: machines follow policy ``P`` (see
  :data:`POLICIES`; ``shipped`` unless told); from now on, the first authentication of each
  machine after monotonic time ``T`` is recorded; when every machine has one:
  ``{"event": "back", "times": [...], "stats": {...}}``. ``{"cmd": "report"}`` sends
  the same for the machines back so far (``"pending"``: how many are not).
- ``"dropped_only": true`` in ``arm`` (one node of a cluster killed: only its machines
  lose their connection): a machine is waited for only once its connection drops
  after ``T``; no ``back`` event (the parent knows how many the node held and asks
  with ``report``, which also says ``dropped``: how many dropped since ``T``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import random
import time

import uvloop

from bench.common.procs import commands, emit
from starmux.control import NoticeEvent, SessionStatus
from starmux.errors import ConnectionLost, CryptoError, RemoteProtocolError
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.node.link import (
    Closed,
    NoticeReceived,
    RelayClosedConnection,
    RelayLink,
    RelayUnreachable,
    connect_failure,
)
from starmux.reconnect import LinkFailure, Reconnect, Retry, close_failure

#: Reconnect policies: ``shipped`` is the daemon's. The others exist to measure a
#: proposal against it: ``refused-flat`` retries a *refused* TCP connect (nothing
#: listens: the relay is restarting, not overloaded) within ``REFUSED_CAP`` seconds
#: without growing the backoff; ``eager`` always retries within ``EAGER`` seconds,
#: which shows what the relay alone can take.
POLICIES = ("shipped", "refused-flat", "eager")
REFUSED_CAP = 1.0
EAGER = 0.05


def machine_keys(salt: bytes, index: int) -> NodeKeys:
    """The keys of machine ``index`` of a run: derived, so no key file is passed around."""

    def derive(purpose: bytes) -> bytes:
        data = purpose + index.to_bytes(4, "big")
        return hashlib.blake2b(data, key=salt, digest_size=32).digest()

    return NodeKeys(derive(b"sign"), derive(b"dh"))


def machine_card(keys: NodeKeys, index: int) -> IdentityCard:
    return keys.card(Role.MACHINE, f"storm-{index:05d}")


class Fleet:
    def __init__(self, url: str, pin: bytes, salt: bytes, first: int, count: int) -> None:
        self.url = url
        self.pin = pin
        self.identities = [
            (keys, machine_card(keys, i))
            for i, keys in ((i, machine_keys(salt, i)) for i in range(first, first + count))
        ]
        self.connected = 0
        self.all_connected = asyncio.Event()
        self.since: float | None = None
        self.pending: set[int] = set()
        self.times: list[float] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.policy = "shipped"
        self.dropped_only = False
        self.dropped = 0

    # --- bookkeeping -----------------------------------------------------------------

    def arm(self, since: float, *, dropped_only: bool = False) -> None:
        self.since = since
        self.dropped_only = dropped_only
        self.dropped = 0
        self.pending = set() if dropped_only else set(range(len(self.identities)))
        self.times = []
        self.stats = collections.Counter()

    def _dropped(self, index: int) -> None:
        if self.dropped_only and self.since is not None and time.monotonic() > self.since:
            self.dropped += 1
            self.pending.add(index)

    def _authenticated(self, index: int, status: SessionStatus) -> None:
        now = time.monotonic()
        if status is not SessionStatus.MACHINE:
            self.stats[f"status-{status.value}"] += 1
        if self.since is not None and index in self.pending and now > self.since:
            self.pending.discard(index)
            self.times.append(now)
            if not self.pending and not self.dropped_only:
                self.report("back")

    async def tell_progress(self) -> None:
        """While armed, how many machines are back, once a second."""
        while True:
            await asyncio.sleep(1.0)
            if self.since is not None:
                emit("progress", back=len(self.times), pending=len(self.pending))

    def report(self, event: str) -> None:
        emit(
            event,
            times=self.times,
            pending=len(self.pending),
            dropped=self.dropped,
            stats=dict(self.stats),
        )

    # --- one machine -----------------------------------------------------------------

    async def run_machine(self, index: int, ramp: asyncio.Semaphore) -> None:
        keys, card = self.identities[index]
        policy = Reconnect()
        first = True
        while True:
            link = RelayLink(self.url, keys, card, pinned_relay_key=self.pin)
            self.stats["attempts"] += 1
            try:
                if first:
                    async with ramp:
                        auth = await link.connect()
                else:
                    auth = await link.connect()
            except (
                CryptoError,
                RelayClosedConnection,
                RelayUnreachable,
                ConnectionLost,
                OSError,
                RemoteProtocolError,
            ) as exc:
                if isinstance(exc, RelayClosedConnection):
                    self.stats[f"refused-{exc.code}"] += 1
                else:
                    cause = exc.__cause__ or exc
                    response = getattr(cause, "response", None)  # an HTTP refusal: which
                    status = f"-{response.status_code}" if response is not None else ""
                    self.stats[f"failed-{type(cause).__name__}{status}"] += 1
                if not await self._wait_after(policy, connect_failure(exc), index):
                    return
                continue
            if first:
                first = False
                self.connected += 1
                if self.connected == len(self.identities):
                    self.all_connected.set()
            policy.connected()
            self._authenticated(index, auth.status)
            hinted = False
            code: int | None = None
            async for event in link.events():
                if (
                    isinstance(event, NoticeReceived)
                    and event.notice.event is NoticeEvent.RESTARTING
                ):
                    hinted = True
                    policy.restart_hint(event.notice.retry_after)
                elif isinstance(event, Closed):
                    code = event.code
            await link.close()
            self._dropped(index)
            self.stats["hinted" if hinted else "unhinted-close"] += 1
            if not await self._wait_after(policy, close_failure(code, connected=True), index):
                return

    async def _wait_after(self, policy: Reconnect, failure: LinkFailure, index: int) -> bool:
        """Wait as the policy says (or as the measured alternative does); False: stop."""
        step = policy.failed(failure, now=time.monotonic())
        if not isinstance(step, Retry):  # the daemon stops (or forgets a revoked key)
            emit("error", detail=f"machine {index}: {failure.value}")
            return False
        delay = step.delay
        if self.policy == "eager":
            delay = random.uniform(0.0, EAGER)
        elif self.policy == "refused-flat" and failure is LinkFailure.REFUSED:
            delay = random.uniform(0.0, REFUSED_CAP)
        await asyncio.sleep(delay)
        policy.retrying()
        return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--relay-key", required=True)
    parser.add_argument("--salt", required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ramp", type=int, default=50, help="initial connects in flight")
    args = parser.parse_args()
    fleet = Fleet(
        args.url, bytes.fromhex(args.relay_key), bytes.fromhex(args.salt), args.first, args.count
    )
    ramp = asyncio.Semaphore(args.ramp)
    tasks = [asyncio.create_task(fleet.run_machine(i, ramp)) for i in range(len(fleet.identities))]
    await fleet.all_connected.wait()
    emit("connected", count=fleet.connected, stats=dict(fleet.stats))
    progress = asyncio.create_task(fleet.tell_progress())
    async for command in commands():
        if command["cmd"] == "arm":
            fleet.arm(float(command["since"]), dropped_only=bool(command.get("dropped_only")))
            fleet.policy = str(command.get("policy", "shipped"))
            emit("armed")
        elif command["cmd"] == "report":
            fleet.report("report")
        elif command["cmd"] == "stop":
            break
    for task in [*tasks, progress]:
        task.cancel()
    await asyncio.gather(*tasks, progress, return_exceptions=True)


if __name__ == "__main__":
    uvloop.run(main())
