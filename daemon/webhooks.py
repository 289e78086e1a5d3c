"""Webhook delivery: an ntfy-compatible POST per notification, sent by the daemon.

Invariants:

- Nothing here blocks the daemon: :meth:`WebhookSender.submit` only queues; each
  target has one worker task that POSTs in order, with a bounded queue (the oldest
  waiting notification is dropped, and counted, when a dead endpoint lets it fill).
- A failed POST (connection error, timeout, 5xx, 408/425/429) is retried with
  :func:`starmux.notify_delivery.retry_delay` (times ``STARMUX_WEBHOOK_RETRY_SCALE``,
  1 unless a test shortens it: :func:`retry_scale`); after the last try the
  notification is given up and the target reported failing. Another 4xx is not retried.
- The URL never reaches a log, an error text or a status event: it may carry a
  secret (an ntfy topic is a capability).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from starmux.notify_delivery import retry_delay, retryable_status, webhook_request
from starmux.notify_rules import Notification, Target

from .env_numbers import positive_number

log = logging.getLogger("starmux.daemon")

#: seconds one POST may take, connect included
POST_TIMEOUT = 10.0
#: notifications waiting per target before the oldest is dropped
QUEUE_LIMIT = 32
#: A factor on every retry delay. Only for tests: the real schedule (0.5 s ... 8 s, 15.5 s
#: in all) would make a test of a failing endpoint wait out those 15.5 s; with 0.4 the
#: same six tries, backing off alike, take 6.2 s. Unset, the schedule is the default.
RETRY_SCALE_ENV = "STARMUX_WEBHOOK_RETRY_SCALE"


def retry_scale(environ: Mapping[str, str] = os.environ) -> float:
    """``STARMUX_WEBHOOK_RETRY_SCALE``, read when the daemon starts: a factor in
    (0, 1] on every retry delay (it only ever shortens the schedule); 1 unset."""
    return positive_number(
        environ,
        RETRY_SCALE_ENV,
        default=1.0,
        upper=1.0,
        what="a factor between 0 and 1",
        hint="e.g. 0.1 for a ten times shorter retry schedule; unset for the default",
    )


@dataclass(frozen=True)
class Outcome:
    """What became of one notification to one target."""

    target: Target
    ok: bool
    detail: str  # "HTTP 503 after 6 tries", "delivered", ...
    tries: int


Report = Callable[[Outcome], None]


class _Worker:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.queue: asyncio.Queue[Notification] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0


class WebhookSender:
    def __init__(
        self, report: Report, *, timeout: float = POST_TIMEOUT, retry_scale: float = 1.0
    ) -> None:
        self._report = report
        self._timeout = timeout
        self._retry_scale = retry_scale  # see RETRY_SCALE_ENV
        self._workers: dict[tuple[bytes, str], _Worker] = {}
        self._session: aiohttp.ClientSession | None = None

    def submit(self, target: Target, notification: Notification) -> None:
        key = (target.device, target.id)
        worker = self._workers.get(key)
        if worker is None or worker.target != target:
            if worker is not None and worker.task is not None:
                worker.task.cancel()
            worker = self._workers[key] = _Worker(target)
        if worker.queue.qsize() >= QUEUE_LIMIT:
            worker.queue.get_nowait()
            worker.dropped += 1
        worker.queue.put_nowait(notification)
        if worker.task is None or worker.task.done():
            worker.task = asyncio.get_running_loop().create_task(self._work(worker))

    def forget(self, device: bytes, target_id: str) -> None:
        worker = self._workers.pop((device, target_id), None)
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    async def close(self) -> None:
        for worker in self._workers.values():
            if worker.task is not None:
                worker.task.cancel()
        for worker in self._workers.values():
            if worker.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
        self._workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                # No cookies kept between targets or posts; no proxy from the environment
                # would see content-free text anyway, but stay explicit.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _work(self, worker: _Worker) -> None:
        while not worker.queue.empty():
            notification = worker.queue.get_nowait()
            self._report(await self._deliver(worker.target, notification))

    async def _deliver(self, target: Target, notification: Notification) -> Outcome:
        headers, body = webhook_request(notification, target.content)
        failures = 0
        while True:
            detail, retry = await self._post_once(target.url, headers, body)
            if not detail:
                return Outcome(target, True, "delivered", failures + 1)
            failures += 1
            delay = retry_delay(failures) if retry else None
            if delay is None:
                tries = f"{failures} {'try' if failures == 1 else 'tries'}"
                return Outcome(target, False, f"{detail} after {tries}", failures)
            await asyncio.sleep(delay * self._retry_scale)

    async def _post_once(self, url: str, headers: dict[str, str], body: bytes) -> tuple[str, bool]:
        """("", False) when delivered, else (why, worth retrying)."""
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return "", False
                return f"HTTP {response.status}", retryable_status(response.status)
        except TimeoutError:
            return "timed out", True
        except aiohttp.ClientError as exc:
            # The exception's text may include the URL: only its class is kept.
            return f"cannot reach it ({type(exc).__name__})", True
