"""``bench/RESULTS.md``: each benchmark owns one ``## `` section and rewrites only it."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def add_results_option(parser: argparse.ArgumentParser) -> None:
    """``--results PATH``: where ``--write`` puts the figures (tests write to a
    temporary file, never to the committed one)."""
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the results file [bench/RESULTS.md]"
    )


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_section(
    heading: str, lines: list[str], command: str, method: str, path: Path = RESULTS
) -> None:
    """Replace the section under ``heading`` (or add it at the end), keeping the rest:
    the date, the machine, the command, then ``lines`` and ``method``."""
    section = "\n".join(
        [
            heading,
            "",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: `nproc` = {os.cpu_count()}, {platform.machine()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
            f"- command: `{command}`",
            "",
            *lines,
            "",
            method,
            "",
        ]
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    path.write_text(text)
