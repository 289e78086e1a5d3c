"""Read a person's one-line answer without blocking the event loop or a clean exit.

A prompt answered through ``input()`` in the loop's thread froze the loop (Ctrl-C
was ignored until Enter); in a worker thread it kept the interpreter from exiting
(the executor waits for the thread, and a daemon thread blocked in stdin can crash
shutdown). Here the loop watches the file descriptor and reads only when a line is
there, so a cancelled question simply stops being asked.
"""

from __future__ import annotations

import asyncio
import os
import sys

MAX_ANSWER = 4096


async def read_answer(fd: int | None = None) -> str:
    """The next line typed on ``fd`` (stdin by default); "" at end of input."""
    fd = sys.stdin.fileno() if fd is None else fd
    loop = asyncio.get_running_loop()
    line = bytearray()

    def wake(ready: asyncio.Future[None]) -> None:
        if not ready.done():
            ready.set_result(None)

    while len(line) < MAX_ANSWER:
        ready: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_reader(fd, wake, ready)
        except (PermissionError, OSError):
            pass  # a regular file or /dev/null: never blocks, read it directly
        else:
            try:
                await ready
            finally:
                loop.remove_reader(fd)
        chunk = os.read(fd, 1)  # one byte: leave what follows the line for the next reader
        if not chunk or chunk == b"\n":
            break
        line += chunk
    return line.decode(errors="replace")
