"""Files both ways through every real part: a session publishes an artifact (local
API → daemon), the controller agent fetches it over the KK channel through the relay;
``run --attach`` delivers files before the command starts."""

from __future__ import annotations

import filecmp
import json
import os
import pty
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from starmux.transfer import CHUNK_SIZE, WINDOW, file_digest

from ..timeouts import poll, scaled
from .cluster import Paired, pair, python
from .conftest import RelayFactory
from .daemon_process import DaemonProcess, run_cli, starmux_command
from .relay_process import RelayProcess
from .watcher import Watcher


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def publish(path: str, *extra: str) -> list[str]:
    """A session that publishes ``path`` and prints what `artifact add --json` said."""
    return python(
        "import subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'starmux.cli', 'artifact', 'add', {path!r},"
        f" '--json', *{list(extra)!r}], capture_output=True, text=True)\n"
        "print(r.stdout.strip() or 'exit %d %s' % (r.returncode, r.stderr.strip()), flush=True)\n"
        "sys.exit(r.returncode)\n"
    )


def digest_of(path: Path) -> str:
    digest = file_digest()
    digest.update(path.read_bytes())
    return digest.hexdigest()


def write_big(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``, every MiB different (a chunk put in the
    wrong place shows); return their digest (``digest_of``), taken as they are written."""
    digest = file_digest()
    block = os.urandom(1 << 20)
    with path.open("wb") as file:
        for index in range(size >> 20):
            data = index.to_bytes(8, "big") + block[8:]
            file.write(data)
            digest.update(data)
        tail = os.urandom(size % (1 << 20))  # a short last chunk, if any
        file.write(tail)
        digest.update(tail)
    return digest.hexdigest()


def pair_while_writing(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess], name: str, size: int
) -> tuple[Paired, Path, str]:
    """``pair`` while a thread writes a big file (``write_big``) into the machine's
    work folder (the two wait on different things); the pair, the file, its digest."""
    workdir = tmp_path / "work"  # the folder `pair` makes for the sessions
    workdir.mkdir()
    big = workdir / name
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(write_big, big, size)
        paired = pair(tmp_path, relay, daemons)
        digest = written.result()
    assert paired.workdir == workdir
    return paired, big, digest


def on_a_terminal(home: Path, *args: str) -> bytes:
    """Run a command with stdout and stderr on a pseudo-terminal; all it wrote."""
    leader, follower = pty.openpty()
    env = {**os.environ, "STARMUX_HOME": str(home), "NO_COLOR": "1"}
    process = subprocess.Popen(
        starmux_command(*args), stdout=follower, stderr=follower, env=env, close_fds=True
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command ended and closed its side
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=scaled(60)) == 0, output.decode(errors="replace")
    return output


def finished_output(paired: Paired, session: str) -> tuple[int, str]:
    watcher = Watcher(paired.controller, session)
    code = watcher.finish()
    return code, b"".join(watcher.lines).decode()


def test_artifact_published_listed_and_fetched(paired: Paired, tmp_path: Path) -> None:
    report = paired.workdir / "report.txt"
    report.write_bytes(os.urandom(300_000) + b"\x1b]52;c;evil\x07")
    session = paired.run(*publish(str(report), "--name", "report.bin"))
    code, output = finished_output(paired, session)
    assert code == 0, output
    published = json.loads(output)
    assert published["name"] == "report.bin" and published["size"] == report.stat().st_size

    listed = paired.json("artifacts", session)
    assert isinstance(listed, list) and len(listed) == 1
    assert listed[0]["id"] == published["artifact"]
    assert listed[0]["digest"] == digest_of(report) == published["digest"]

    target = tmp_path / "fetched.bin"
    fetched = paired.json("get", published["artifact"], "-o", str(target))
    assert isinstance(fetched, dict)
    assert target.read_bytes() == report.read_bytes()
    assert fetched["digest"] == digest_of(report)
    assert target.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.starmux-part"))

    # An existing file is not replaced without --force.
    again = run_cli(paired.controller, "get", published["artifact"], "-o", str(target))
    assert again.returncode != 0 and "exists" in again.stderr and "--force" in again.stderr

    # On a terminal, progress (on stderr); the result line escapes the name.
    shown = on_a_terminal(
        paired.controller, "get", published["artifact"], "-o", str(target), "--force"
    )
    assert b"100.0%" in shown and b"\r\x1b[K" in shown
    assert b"fetched report.bin" in shown and b"hash checked" in shown


def test_a_path_outside_the_allowed_roots_is_refused(paired: Paired) -> None:
    session = paired.run(*publish("/etc/hostname"))
    code, output = finished_output(paired, session)
    assert code != 0
    assert "not inside an allowed root" in output
    assert paired.json("artifacts", session) == []


def test_an_attachment_reaches_the_session(paired: Paired, tmp_path: Path) -> None:
    data = tmp_path / "dataset.csv"
    data.write_bytes(b"a,b\n" + os.urandom(200_000).hex().encode())
    show = python(
        "import os, hashlib, pathlib\n"
        "folder = pathlib.Path(os.environ['STARMUX_ATTACHMENTS'])\n"
        "for path in sorted(folder.iterdir()):\n"
        "    print(path.name, oct(path.stat().st_mode & 0o777), path.stat().st_size,"
        " hashlib.sha256(path.read_bytes()).hexdigest(), flush=True)\n"
    )
    reply = paired.json(
        "run",
        "--machine",
        paired.daemon.name,
        "--cwd",
        str(paired.workdir),
        "--attach",
        str(data),
        "--",
        *show,
    )
    assert isinstance(reply, dict) and reply["ok"] is True, reply
    code, output = finished_output(paired, str(reply["session"]))
    assert code == 0, output
    import hashlib

    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    assert output.split() == ["dataset.csv", "0o600", str(data.stat().st_size), expected]


def test_an_attachment_over_the_cap_is_refused_before_anything_is_sent(
    paired: Paired, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 3 * 1024 * 1024)
    env_before = os.environ.get("STARMUX_MAX_FILE_SIZE")
    os.environ["STARMUX_MAX_FILE_SIZE"] = "1M"
    try:
        result = run_cli(
            paired.controller,
            "run",
            "--machine",
            paired.daemon.name,
            "--attach",
            str(big),
            "--",
            "true",
        )
    finally:
        if env_before is None:
            del os.environ["STARMUX_MAX_FILE_SIZE"]
        else:
            os.environ["STARMUX_MAX_FILE_SIZE"] = env_before
    assert result.returncode != 0
    assert "big.bin is 3.0 MiB" in result.stderr and "at most 1.0 MiB" in result.stderr
    assert "nothing was sent" in result.stderr
    assert paired.json("sessions") == []  # no session was started
    assert not (paired.daemon.home / "uploads").exists()  # and no byte reached the machine


class TimedWatcher(Watcher):
    """A watch that notes when each line arrived (to measure live output latency)."""

    def __init__(self, controller: Path, session: str) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        super().__init__(controller, session)

    def _pump(self, stream: object, sink: list[bytes]) -> None:
        if sink is not self.lines:
            super()._pump(stream, sink)
            return
        for line in stream:  # type: ignore[attr-defined]
            arrived = time.time()
            with self._changed:
                sink.append(line)
                self.arrivals.append((arrived, line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def latencies(self, start: float, end: float) -> list[float]:
        """Seconds from print to arrival of the lines printed in [start, end)."""
        delays = []
        for arrived, line in list(self.arrivals):
            printed = float(line)
            if start <= printed < end:
                delays.append(arrived - printed)
        return delays


TICKER = (
    "import os, sys, time\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    print(repr(time.time()), flush=True)\n"
    "    time.sleep(0.02)\n"
)
BIG = 200 * 1024 * 1024


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_200_mib_artifact_resumes_across_a_relay_restart_while_live_output_flows(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory()
    paired, big, written = pair_while_writing(tmp_path, relay, daemons, "big.bin", BIG)
    session = paired.run(*publish(str(big)))
    # While the machine copies the artifact: the ticker starts, its watch gets past
    # its first sync.
    stop = tmp_path / "stop-ticking"
    ticker = paired.run(*python(TICKER), str(stop), title="ticker")
    watch = TimedWatcher(paired.controller, ticker)
    code, output = finished_output(paired, session)
    assert code == 0, output
    artifact = json.loads(output)["artifact"]

    watch.wait_lines(25)  # past the first sync
    baseline_start = time.time()
    # A second of baseline (50 more lines): live output with nothing else going on.
    watch.wait_lines(len(watch.lines) + 50)
    baseline_end = time.time()

    target = tmp_path / "big.fetched"
    part = tmp_path / "big.fetched.starmux-part"
    env = {**os.environ, "STARMUX_HOME": str(paired.controller), "NO_COLOR": "1"}
    started = time.time()
    get = subprocess.Popen(
        starmux_command("get", artifact, "-o", str(target), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    held = poll(
        lambda: (
            part.stat().st_size if part.exists() and part.stat().st_size > BIG * 2 // 5 else None
        ),
        within=60,
        every=0.01,
        what="two fifths of the artifact",
    )
    cut = time.time()
    relay.kill()  # in the middle of the transfer
    relay = relay_factory(data_dir=relay.data_dir, port=relay.port)
    stdout, stderr = get.communicate(timeout=scaled(90))
    finished = time.time()
    assert get.returncode == 0, stderr
    stop.touch()
    assert watch.finish() == 0

    fetched = json.loads(stdout)
    assert fetched["digest"] == written  # the digest of what big.bin was written with
    assert target.stat().st_size == BIG and filecmp.cmp(target, big, shallow=False)
    # Resumed where the controller stood, not restarted: one resume, past 40 %, and
    # the machine sent the file once plus at most the window lost in flight.
    assert len(fetched["resumed_at"]) == 1 and fetched["resumed_at"][0] >= BIG * 2 // 5
    sent = json.loads(
        paired.daemon.wait_for(r"artifact \S+ sent: .*").group(0).split(": ", 1)[1].split()[0]
    )
    assert BIG <= sent <= BIG + WINDOW * CHUNK_SIZE

    before = watch.latencies(baseline_start, baseline_end)
    during = watch.latencies(started, cut)  # live output while the file streamed
    assert before and len(during) >= 10
    rate = held / (1 << 20) / (cut - started)
    print(
        f"\n200 MiB artifact: {rate:.1f} MiB/s before the cut ({held >> 20} MiB in "
        f"{cut - started:.2f} s); whole fetch {finished - started:.1f} s with a relay restart"
        f"\nlive output latency: before median {statistics.median(before) * 1000:.1f} ms "
        f"p95 {_percentile(before, 0.95) * 1000:.1f} ms; during the transfer median "
        f"{statistics.median(during) * 1000:.1f} ms p95 {_percentile(during, 0.95) * 1000:.1f} ms"
        f" ({len(during)} lines)"
    )
    # Live output keeps flowing: no line waited behind the file for long.
    assert _percentile(during, 0.95) < scaled(1.0)


def test_an_attachment_upload_resumes_across_a_relay_restart(
    tmp_path: Path, relay_factory: RelayFactory, daemons: list[DaemonProcess]
) -> None:
    relay = relay_factory()
    paired = pair(tmp_path, relay, daemons)
    size = 96 * 1024 * 1024
    data = tmp_path / "weights.bin"
    with data.open("wb") as file:
        block = os.urandom(1 << 20)
        for index in range(size >> 20):
            file.write(index.to_bytes(8, "big") + block[8:])
    show = python(
        "import os, hashlib, pathlib\n"
        "path = pathlib.Path(os.environ['STARMUX_ATTACHMENTS']) / 'weights.bin'\n"
        "print(hashlib.sha256(path.read_bytes()).hexdigest(), flush=True)\n"
    )
    env = {**os.environ, "STARMUX_HOME": str(paired.controller), "NO_COLOR": "1"}
    run = subprocess.Popen(
        starmux_command(
            "run",
            "--machine",
            paired.daemon.name,
            "--cwd",
            str(paired.workdir),
            "--attach",
            str(data),
            "--json",
            "--",
            *show,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    uploads = paired.daemon.home / "uploads"

    def staged() -> int | None:
        parts = list(uploads.glob("*.part")) if uploads.exists() else []
        held = sum(part.stat().st_size for part in parts)
        return held if held > size // 3 else None

    poll(staged, within=60, every=0.01, what="a third of the attachment on the machine")
    relay.kill()
    relay = relay_factory(data_dir=relay.data_dir, port=relay.port)
    stdout, stderr = run.communicate(timeout=scaled(90))
    assert run.returncode == 0, stderr
    reply = json.loads(stdout)
    code, output = finished_output(paired, str(reply["session"]))
    assert code == 0, output
    import hashlib

    assert output.strip() == hashlib.sha256(data.read_bytes()).hexdigest()
    # Resumed from the chunks the machine held (a third at least), not from zero.
    starts = paired.daemon.wait_for(r"attachment weights.bin received: .*").group(0)
    first, *resumed = [int(n) for n in starts.rsplit(" ", 1)[1].split(",")]
    assert first == 0 and resumed and resumed[-1] * CHUNK_SIZE >= size // 3


def test_a_fetch_interrupted_by_an_agent_restart_resumes_from_the_kept_part(
    tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]
) -> None:
    """`controller stop` in the middle of a `get`: the part stays; the next `get` (a new
    agent) asks the machine only for the chunks the part lacks, and checks the hash
    of the whole file."""
    # Big enough that `controller stop` lands mid-way at the machine's file pace.
    size = 160 * 1024 * 1024 + 12345  # a short last chunk
    paired, big, written = pair_while_writing(tmp_path, relay, daemons, "dataset.bin", size)
    session = paired.run(*publish(str(big)))
    code, output = finished_output(paired, session)
    assert code == 0, output
    artifact = json.loads(output)["artifact"]

    target = tmp_path / "dataset.fetched"
    part = tmp_path / "dataset.fetched.starmux-part"
    resume = tmp_path / "dataset.fetched.starmux-resume"
    env = {**os.environ, "STARMUX_HOME": str(paired.controller), "NO_COLOR": "1"}
    mark = len(paired.daemon.output)
    first = subprocess.Popen(
        starmux_command("get", artifact, "-o", str(target), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    poll(
        lambda: True if part.exists() and part.stat().st_size > size // 6 else None,
        within=60,
        every=0.005,
        what="a sixth of the artifact",
    )
    assert run_cli(paired.controller, "controller", "stop").returncode == 0
    first.communicate(timeout=scaled(30))
    assert first.returncode != 0, "the fetch finished before the agent stopped"
    assert not target.exists()
    held = part.stat().st_size
    assert size // 6 < held < size and json.loads(resume.read_text())["artifact"] == artifact
    assert part.stat().st_mode & 0o777 == 0o600 and resume.stat().st_mode & 0o777 == 0o600

    again = run_cli(paired.controller, "get", artifact, "-o", str(target), "--json")
    assert again.returncode == 0, again.stderr
    fetched = json.loads(again.stdout)
    kept = held // CHUNK_SIZE * CHUNK_SIZE
    assert fetched["kept_from_before"] == kept
    assert fetched["bytes_received"] == size - kept
    assert fetched["digest"] == written and filecmp.cmp(target, big, shallow=False)
    assert not part.exists() and not resume.exists()
    # What the machine sent for this fetch: only the chunks the part lacked.
    report = paired.daemon.wait_for(
        r"artifact \S+ sent: (\d+) bytes for \d+, started at chunks (\S+)", after=mark
    )
    assert int(report.group(1)) == size - kept
    assert report.group(2) == str(kept // CHUNK_SIZE)


def test_an_upload_no_session_claims_is_deleted_after_the_bound(
    tmp_path: Path,
    relay: RelayProcess,
    daemons: list[DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose start is refused (its folder is outside the allowed roots) after its
    attachment arrived: the staged file waits for a start-session that never comes,
    and the daemon deletes it once it sat unclaimed for STARMUX_UNCLAIMED_UPLOAD_TTL."""
    # The bound outlasts the refused `run` (so the staged file is seen), and no more.
    ttl = scaled(3.0)
    monkeypatch.setenv("STARMUX_UNCLAIMED_UPLOAD_TTL", f"{ttl:g}")  # read at the daemon's start
    paired = pair(tmp_path, relay, daemons)
    data = tmp_path / "dataset.csv"
    data.write_bytes(os.urandom(300_000))
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    mark = len(paired.daemon.output)
    began = time.monotonic()  # before the upload: its bound runs from a later moment
    result = run_cli(
        paired.controller,
        "run",
        "--machine",
        paired.daemon.name,
        "--cwd",
        str(outside),
        "--attach",
        str(data),
        "--",
        "true",
    )
    assert result.returncode != 0 and "allowed root" in result.stderr, result.stderr
    uploads = paired.daemon.home / "uploads"
    staged = list(uploads.iterdir())
    assert len(staged) == 1 and staged[0].stat().st_size == data.stat().st_size

    said = paired.daemon.wait_for(r"attachment dataset\.csv deleted: [^\n]*", after=mark)
    assert time.monotonic() - began >= ttl  # not deleted before its bound
    assert f"not claimed by a session for {ttl:g} s" in said.group(0)
    assert list(uploads.iterdir()) == []
