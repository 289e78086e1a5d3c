"""A daemon's network fails in the middle of a chatty session; the controller's watch
still ends with exactly the session's output.

The relay, the daemon and the controller each run in their own network namespace
(see :mod:`tests.fault.topology`); ``starmux watch`` follows a session that prints
numbered lines at a steady pace, from the controller's namespace. The faults hit
only the daemon's link:

- *link cut*: ``ip link set eth0 down`` for 30 s, then up;
- *loss and delay*: for 20 s, 30 % of packets dropped each way (iptables
  ``statistic``) *and* every chunk between the daemon and the relay held 200 ms each
  way. That delay is emulated in userspace (a forwarding proxy on the daemon's path,
  :mod:`tests.fault.delay_forwarder`) because this kernel has no ``tc netem``; TCP's
  own round trip stays short, only the application sees the delay;
- *silently dead connection*: every packet of the daemon's current connection is
  dropped, for good, while new connections get through (a NAT or firewall forgot the
  flow, the machine roamed).

Asserted: the watch prints exactly lines 1..N, in order, no gap, no repeat;
``starmux logs`` agrees; the session succeeded; the watch recovers within a bound.
Recovery times and a timeline are printed (run with ``-s``) and saved as JSON in the
test's tmp dir.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from starmux.node.link import UNACKNOWLEDGED_DATA_TIMEOUT

from ..integration.cluster import python
from ..integration.watcher import Watcher
from .conftest import FaultCluster
from .timeline import (
    Stream,
    Timeline,
    chatty_script,
    measure_recovery,
    mismatch,
    numbered_line,
    report,
)

RATE = 200  # lines per second the session prints
# At most ~100 s of output, so both faults of the first test land mid-stream however
# slow the recovery from the first; once the faults are over the session is ended
# (Stream.end_at) rather than waited out.
LINES = 20_000
CUT_SECONDS = 30.0
LOSSY_SECONDS = 20.0
LOSS = 0.3
DELAY = 0.2
RECOVERY_BOUND = 40.0  # the daemon's reconnect backoff is capped at 30 s
STALL_CHECK_AFTER = 3.0  # into a fault that stops traffic, nothing more may arrive

DEAD_LINES = 14_000  # at most ~70 s: outlives the bound below
# ~2 KiB lines (~450 KB/s): the daemon's send buffer fills within seconds of the
# connection dying, whatever size the kernel had grown it to (up to tcp_wmem's 4 MiB).
DEAD_PAD = 2000
DEAD_BOUND = UNACKNOWLEDGED_DATA_TIMEOUT + 15.0  # the kernel's verdict, then reconnect


def start_chatty(cluster: FaultCluster, lines: int, pad: int = 0) -> tuple[str, Watcher, Stream]:
    progress = cluster.paired.workdir / "progress"
    script = chatty_script(lines, RATE, pad)
    session = cluster.run(*python(script), str(progress), title="chatty")
    watcher = cluster.watch(session)
    return session, watcher, Stream(watcher, progress, RATE)


def finish(stream: Stream, timeline: Timeline, lines: int) -> int:
    code = stream.watcher.finish(timeout=120)  # returns once all it printed is read
    timeline.mark(f"watch exited {code}")
    return code


def close_figures(figures: dict[str, Any], timeline: Timeline, cluster: FaultCluster) -> None:
    timeline.stop()
    figures["daemon_connects_at"] = [
        round(at - timeline.started, 2) for at, _ in cluster.net.forwarder.accepted
    ]
    figures["events"] = timeline.events
    figures["samples_t_printed_watched"] = timeline.samples


def assert_exact(
    cluster: FaultCluster, session: str, watcher: Watcher, code: int, lines: int, pad: int = 0
) -> None:
    assert code == 0, b"".join(watcher.errors).decode(errors="replace")
    expected = [numbered_line(i, pad) for i in range(1, lines + 1)]
    watched = [f"{line}\n".encode() for line in expected]
    assert watcher.lines == watched, mismatch(watcher.lines, lines)
    assert cluster.cli("logs", session).splitlines() == expected
    assert cluster.status(session) == "succeeded"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_watch_is_exact_through_a_link_cut_then_loss_and_delay(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    net = cluster.net
    session, watcher, stream = start_chatty(cluster, LINES)
    timeline = Timeline(stream, cluster.paired.daemon).start()
    figures: dict[str, Any] = {"lines": LINES, "rate_lines_per_s": RATE}
    try:
        watcher.wait_lines(2 * RATE, timeout=30)

        # 1. The daemon's link goes down.
        timeline.mark(f"link down for {CUT_SECONDS:.0f} s")
        net.cut_machine_link()
        time.sleep(STALL_CHECK_AFTER)
        stalled_at = stream.watched()
        time.sleep(CUT_SECONDS - STALL_CHECK_AFTER)
        arrived_during_cut = stream.watched() - stalled_at
        net.restore_machine_link()
        restored = time.monotonic()
        timeline.mark("link up")
        cut = measure_recovery(stream, restored, limit=2 * RECOVERY_BOUND)
        timeline.mark(f"after the cut: {cut.as_dict()}")
        figures["link_cut"] = {
            "seconds": CUT_SECONDS,
            "lines_watched_while_cut": arrived_during_cut,
            **cut.as_dict(),
        }

        # 2. Lossy and slow.
        printed_at_loss = stream.printed()
        timeline.mark(f"{LOSS:.0%} loss + {DELAY * 1000:.0f} ms delay for {LOSSY_SECONDS:.0f} s")
        lossy_from = timeline.now()
        watched_at_loss = stream.watched()
        net.set_loss(LOSS)
        net.set_delay(DELAY)
        time.sleep(LOSSY_SECONDS)
        net.set_loss(0.0)
        net.set_delay(0.0)
        ended = time.monotonic()
        lossy_to = timeline.now()
        watched_while_lossy = stream.watched() - watched_at_loss
        timeline.mark("loss and delay off")
        lossy = measure_recovery(stream, ended, limit=2 * RECOVERY_BOUND)
        timeline.mark(f"after loss + delay: {lossy.as_dict()}")
        lines = min(LINES, stream.end_at())  # the faults are over: 1 s more, then end
        figures["loss_and_delay"] = {
            "seconds": LOSSY_SECONDS,
            "loss": LOSS,
            "delay_s": DELAY,
            "line_printed_when_it_began": printed_at_loss,
            "lines_watched_while_lossy": watched_while_lossy,
            **timeline.lag_between(lossy_from, lossy_to),
            **lossy.as_dict(),
        }
        figures["lines"] = lines
        code = finish(stream, timeline, lines)
    finally:
        close_figures(figures, timeline, cluster)
        report(figures, tmp_path / "fault-figures.json")

    assert arrived_during_cut == 0, "the link cut did not stop the stream: no fault happened"
    assert printed_at_loss < LINES, "the session ended before the lossy phase began"
    assert_exact(cluster, session, watcher, code, lines)
    for name, recovery in (("link cut", cut), ("loss + delay", lossy)):
        assert recovery.caught_up is not None, f"no recovery after the {name}"
        assert recovery.caught_up < RECOVERY_BOUND, f"{name}: {recovery}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_silently_dead_connection_is_replaced_while_output_streams(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    """The WebSocket keepalive alone cannot notice this: websockets' ``ping()`` first
    waits for the send buffer to drain, which never happens on a dead connection, so
    no ping is sent and nothing times out until TCP gives up (``tcp_retries2``: ~15
    min). The bound on unacknowledged data (``TCP_USER_TIMEOUT``, starmux/node/link.py) is
    what replaces the connection; this test failed before it."""
    net = cluster.net
    session, watcher, stream = start_chatty(cluster, DEAD_LINES, DEAD_PAD)
    timeline = Timeline(stream, cluster.paired.daemon).start()
    figures: dict[str, Any] = {
        "lines": DEAD_LINES,
        "rate_lines_per_s": RATE,
        "line_bytes": len(numbered_line(DEAD_LINES, DEAD_PAD)) + 1,
    }
    try:
        watcher.wait_lines(2 * RATE, timeout=30)
        _, port = net.forwarder.accepted[-1]
        timeline.mark(f"the daemon's connection (port {port}) silently dead")
        net.kill_connection_silently(port)
        died = time.monotonic()
        time.sleep(STALL_CHECK_AFTER)
        dead = measure_recovery(stream, died, limit=DEAD_BOUND)
        timeline.mark(f"after the connection died: {dead.as_dict()}")
        figures["silently_dead_connection"] = dead.as_dict()
        if dead.resumed is not None:
            lines = min(DEAD_LINES, stream.end_at())  # recovered: 1 s more, then end
            figures["lines"] = lines
            code = finish(stream, timeline, lines)
    finally:
        close_figures(figures, timeline, cluster)
        report(figures, tmp_path / "fault-figures.json")

    assert dead.resumed is not None, (
        f"the watch did not resume within {DEAD_BOUND:.0f} s of the daemon's connection dying: "
        "the daemon still holds the dead connection"
    )
    assert dead.caught_up is not None
    assert dead.caught_up < DEAD_BOUND, dead
    assert_exact(cluster, session, watcher, code, lines, DEAD_PAD)
