"""Make this machine ready for the test suite, or fail saying exactly what is missing.

Run by the README's test command (and so by CI) before pytest::

    .venv/bin/python tests/setup_system.py

- System programs some tests need (``iptables`` and ``ip`` for the network-fault
  tests; ``chromium`` once browser tests exist; ``node`` and ``npm`` for the web
  controller's tests) are installed with apt-get when this
  runs as root on Debian; otherwise it exits 1 naming the packages to install (and
  how to run the rest without them). A test is never skipped for want of them.
- PostgreSQL and Redis (the clustered relay's tests) are started when installed but
  down, as on the CI machines; when absent it says so, and the tests that need
  them fail with how to start them.

Standard library only: it runs before anything is known to work. The decisions are
in :func:`plan` (pure, unit-tested); :func:`main` only looks and acts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Requirement:
    """Programs that the tests under ``needed_by`` cannot run without."""

    needed_by: str  # a folder under tests/; the requirement holds only if it has tests
    programs: tuple[str, ...]
    packages: tuple[str, ...]  # Debian packages that provide the programs
    needs_root: bool = False
    why: str = ""


REQUIREMENTS = (
    Requirement(
        "fault",
        ("ip", "iptables"),
        ("iproute2", "iptables"),
        needs_root=True,
        why="network namespaces, veth pairs and packet loss",
    ),
    Requirement("browser", ("chromium",), ("chromium",), why="a real browser"),
    Requirement(
        "unit",
        ("node", "npm"),
        ("nodejs", "npm"),
        why="the web controller's protocol tests (node --test web/test/) and the check "
        "that web/vendor matches web/package-lock.json",
    ),
)


@dataclass
class Plan:
    install: list[str] = field(default_factory=list)  # Debian packages to apt-get
    errors: list[str] = field(default_factory=list)  # what cannot be fixed from here


def has_tests(folder: Path) -> bool:
    return folder.is_dir() and any(folder.rglob("test_*.py"))


def plan(
    requirements: Iterable[Requirement],
    *,
    has_tests: Callable[[str], bool],
    which: Callable[[str], str | None],
    is_root: bool,
    has_apt: bool,
) -> Plan:
    result = Plan()
    for req in requirements:
        if not has_tests(req.needed_by):
            continue
        if req.needs_root and not is_root:
            result.errors.append(
                f"tests/{req.needed_by} needs root ({req.why}): run the test command as "
                f"root, or run the rest with: .venv/bin/python -m pytest -q "
                f"--ignore=tests/{req.needed_by}"
            )
            continue
        missing = [p for p in req.programs if which(p) is None]
        if not missing:
            continue
        packages = [pkg for pkg in req.packages if pkg not in result.install]
        if is_root and has_apt:
            result.install.extend(packages)
        else:
            result.errors.append(
                f"tests/{req.needed_by} needs {', '.join(missing)} ({req.why}): install "
                f"them (Debian: apt-get install {' '.join(req.packages)}) or run the rest "
                f"with: .venv/bin/python -m pytest -q --ignore=tests/{req.needed_by}"
            )
    return result


def apt_install(packages: list[str]) -> str | None:
    """Install ``packages``; None on success, else what apt-get said."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}"
    return None


def _quiet(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def start_services() -> list[str]:
    """Start PostgreSQL and Redis if installed and down; returns what went wrong."""
    problems = []
    if shutil.which("pg_ctlcluster") and not _quiet("pg_isready", "-q", "-h", "127.0.0.1"):
        versions = sorted(Path("/etc/postgresql").glob("*/main"))
        if not versions:
            problems.append("PostgreSQL is installed but has no cluster in /etc/postgresql")
        else:
            version = versions[-1].parent.name
            start = ("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")
            if not _quiet(*start):
                problems.append(f"could not start PostgreSQL: {' '.join(start)} failed")
    elif not shutil.which("pg_ctlcluster") and not shutil.which("postgres"):
        print("setup: PostgreSQL is not installed; the clustered relay's tests will say so")
    if shutil.which("redis-server") and not _quiet("redis-cli", "-h", "127.0.0.1", "ping"):
        for folder in ("/var/lib/redis", "/var/log/redis"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        redis = (
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
            "--port", "6379", "--save", "", "--appendonly", "no",
            "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/tests.log",
        )  # fmt: skip
        if not _quiet(*redis):
            problems.append("could not start Redis: redis-server --daemonize yes failed")
    elif not shutil.which("redis-server"):
        print("setup: Redis is not installed; the clustered relay's tests will say so")
    return problems


def main() -> int:
    todo = plan(
        REQUIREMENTS,
        has_tests=lambda folder: has_tests(TESTS / folder),
        which=shutil.which,
        is_root=os.geteuid() == 0,
        has_apt=shutil.which("apt-get") is not None,
    )
    if todo.install:
        print(f"setup: apt-get install {' '.join(todo.install)}", flush=True)
        failure = apt_install(todo.install)
        if failure is not None:
            todo.errors.append(failure)
        else:  # installed: anything still missing is an error now, never a retry
            todo.errors.extend(
                plan(
                    REQUIREMENTS,
                    has_tests=lambda folder: has_tests(TESTS / folder),
                    which=shutil.which,
                    is_root=True,
                    has_apt=False,
                ).errors
            )
    todo.errors.extend(start_services())
    for error in todo.errors:
        print(f"setup: {error}", file=sys.stderr)
    return 1 if todo.errors else 0


if __name__ == "__main__":
    sys.exit(main())
