"""The reconnect storm's figures: the printed table and its section of ``bench/RESULTS.md``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common.results_file import write_section

HEADING = "## Reconnect storm"
TARGET_SECONDS = 10.0

METHOD = """\
How it is measured (`python -m bench.storm`). *Storm*: the registry is filled before the relay
starts, through the real `SqliteRegistry` API (one account and controller; per machine
create_ticket → open_ticket → grant_machine with a real grant signature): the pairing
handshake is skipped (the resync part pairs for real), the relay's rows are those pairing
leaves. The machines' connections run in separate uvloop processes
(`bench/storm/clients.py`); each one is the shipped `starmux.node.link.RelayLink` (WebSocket
upgrade, `NodeAuth` against the pinned relay key) driven by the daemon's policy from
`daemon/runtime.py` with the shipped `starmux.backoff.Backoff` (restart notice: sleep
`hinted_delay(retry_after)`; otherwise, and after every failed connect: `next_delay()`).
RelayLink's own cost (a reader task and a queue per connection) is kept: the load
processes stay far from saturated. The relay (`starmux relay serve`, limits per IP
raised) is stopped with SIGTERM (graceful: RESTARTING notices, then 1012) or SIGKILL,
and started again on the same port and data dir; the clock starts at the new process's
"listening" line and stops when every machine has authenticated again (timestamps from
the load processes, one CLOCK_MONOTONIC). Relay CPU is utime+stime from `/proc/PID/stat`
over that window (and per re-authentication), RSS peak is `VmHWM` of the new process;
"other processes" is the CPU the rest of the machine used meanwhile (`/proc/stat` minus
the relay and the load processes): above ~0.3 cores the figures are slowed by it.
*Controller resync*: real `daemon.runtime.Daemon`s in one load process
(`bench/common/daemon_host.py`), each paired for real by `client.actions.pair` with the code
its terminal printed, each given a finished session of output lines in its event log;
after a SIGTERM restart, a fresh `client.live.LiveController` is started at the new
relay's "listening", and the clock stops when it has every machine live (Noise_KK re-run,
log resynced); its cache cursors are then checked against each daemon's last seq.
`--policies` runs experiments (reconnect policies other than the shipped daemon's) that
measure proposed changes; see `bench/storm/clients.py`."""


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(q * len(values)))]


def _storm_row(r: dict[str, Any], machines: int) -> str:
    relay = r["relay"]
    back = f"**{r['all_back_s']:.2f} s**" if r["back"] == machines else f"{r['back']}/{machines}"
    loads = sum(r["load_cpu_pct"]) / 100
    others = max(0.0, relay["busy_cores"] - relay["cpu_pct"] / 100 - loads)
    return (
        f"| {r['mode']} | {r['policy']} | {r['stop_s']:.2f} + {r['start_s']:.2f} s | {back} "
        f"| {r['p50_s']:.2f} s | {r['p90_s']:.2f} s | {relay['cpu_pct']:.0f}% "
        f"({1000 * relay['cpu_s'] / max(1, r['back']):.2f} ms) | {r['rss_hwm_mib']:.0f} MiB "
        f"| {loads:.2f} | {others:.2f} | {r['stats'].get('attempts', 0)} "
        f"| {r['auth_failures'].get('timeout', 0)} |"
    )


def figures(
    storm: dict[str, Any],
    resync: dict[str, Any] | None,
    *,
    load_processes: int,
    load_before: str,
) -> list[str]:
    n = storm["machines"]
    lines = [
        f"**Storm**: {n} paired machines, their connections in {load_processes} "
        f"load processes, each as the shipped daemon reconnects; the shipped relay; target: all "
        f'back within {TARGET_SECONDS:.0f} s of the new relay\'s "listening". Load average '
        f"before the run: {load_before}.",
        "",
        f"Setup: registry filled in {storm['populate_s']:.1f} s, all {n} first connected "
        f"in {storm['connect_s']:.1f} s; relay RSS with {n} connected: "
        f"{storm['steady_rss_mib']:.0f} MiB.",
        "",
        "| restart | policy | relay stop + start | all back | p50 | p90 "
        "| relay CPU (per re-auth) | relay RSS peak | load processes, cores "
        "| other processes, cores | connect attempts | auth timeouts |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_storm_row(r, n) for r in storm["storms"]),
        "",
    ]
    for r in storm["storms"]:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(r["stats"].items()))
        failures = ", ".join(f"{k} {v}" for k, v in sorted(r["auth_failures"].items()))
        lines.append(
            f"- {r['mode']}, {r['policy']}: first back {r['first_s']:.2f} s; {detail}; "
            f"relay auth failures: {failures or 'none'}"
        )
        if r["stop_log"]:
            lines.append("  - the old relay said while stopping: " + "; ".join(r["stop_log"]))
    if resync is None:
        return lines
    s = resync
    lines += [
        "",
        f"**Controller resync**: {s['machines']} real daemons paired for real, each with "
        f"{s['lines']} output lines of history ({s['events']} events in all); SIGTERM restart.",
        "",
        f"- setup {s['setup_s']:.1f} s: pairing {s['pairing_s']:.1f} s "
        f"({1000 * s['pairing_s'] / s['machines']:.0f} ms per machine, one after the other), "
        f"history {s['history_s']:.1f} s",
        f"- relay stop + start {s['stop_s']:.2f} + {s['start_s']:.2f} s; from the new relay's "
        f'"listening": controller connected {s["controller_connected_s"]:.2f} s, every daemon '
        f"reconnected {s['daemons_back_s']:.2f} s, **{s['live']}/{s['machines']} machines "
        f"live (KK + resync) {s['all_live_s']:.2f} s** (p50 {s['live_p50_s']:.2f} s); "
        f"cursors equal to the daemons' last seq: {s['cursors_ok']}/{s['machines']}; relay CPU "
        f"{s['relay']['cpu_pct']:.0f}%",
    ]
    if s["not_live"]:
        lines.append(
            f"- **not live after {s['live_timeout']:.0f} s**, as the controller saw them: "
            + "; ".join(s["not_live"])
        )
    return lines


def write_results(lines: list[str], command: str, path: Path) -> None:
    write_section(HEADING, lines, command, METHOD, path)
