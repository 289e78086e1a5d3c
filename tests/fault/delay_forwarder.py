"""A TCP forwarder that can hold every chunk for a while, in both directions.

The kernel here has no ``tc netem`` ("Specified qdisc kind is unknown"), so latency
is emulated in userspace: each chunk read from one side is written to the other side
``delay`` seconds after it arrived. Chunks are pipelined (a queue of due times, like
netem does it), so the delay adds latency without capping throughput. TCP itself sees
the short hops on either side of the forwarder, not the delay: the emulation is of
the application's latency, not of the round-trip time TCP measures.

With ``delay == 0`` it is a plain forwarder. EOF is passed on (half-close) after the
data before it; a reset or error on either side aborts both.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from .netns import NetNamespace

CHUNK = 65536
QUEUE_CHUNKS = 256


class DelayForwarder:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen = listen
        self.upstream = upstream
        #: seconds each chunk waits; may be changed at any time from any thread
        self.delay = 0.0
        #: (time.monotonic(), peer port) of every accepted connection: the daemon's
        self.accepted: list[tuple[float, int]] = []
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start_in(self, ns: NetNamespace) -> DelayForwarder:
        self._thread = ns.thread(self._main, "delay-forwarder")
        if not self._ready.wait(10) or self._failure is not None:
            raise RuntimeError(f"delay forwarder did not start: {self._failure!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._forward(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server = await asyncio.start_server(on_client, *self.listen, reuse_address=True)
        self._ready.set()
        async with server:
            await self._stopping.wait()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forward(
        self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter
    ) -> None:
        self.accepted.append((time.monotonic(), down_writer.get_extra_info("peername")[1]))
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            down_writer.transport.abort()
            return
        writers = (down_writer, up_writer)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(down_reader, up_writer))
                group.create_task(self._pipe(up_reader, down_writer))
        except* (OSError, EOFError):
            pass
        finally:
            for writer in writers:
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(write())
