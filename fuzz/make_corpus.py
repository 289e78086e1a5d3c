"""Write each harness's seed corpus to ``tests/data/fuzz/<name>/`` (and nothing else there).

The seeds are deterministic, so running this again changes no file unless a wire
format changed; the unit tests check that the committed corpus is current.

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.harness import Target, load_targets


def write_seeds(target: Target) -> tuple[int, int]:
    """Make the seed folder hold exactly the seeds; returns (written, removed)."""
    folder = target.seed_dir
    folder.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds()
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and path.name not in seeds:
            path.unlink()
            removed += 1
    written = 0
    for name, data in seeds.items():
        path = folder / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            written += 1
    return written, removed


def main() -> None:
    for target in load_targets():
        written, removed = write_seeds(target)
        print(
            f"{target.name}: {len(target.seeds())} seeds in {target.seed_dir} "
            f"({written} written, {removed} removed)"
        )


if __name__ == "__main__":
    main()
