"""Coverage-guided fuzzing (atheris) of every parser of untrusted starmux input.

One harness per parser, each a module with a :class:`~fuzz.harness.Target`; see
``fuzz/README.md`` for how to run them and where crashers go.
"""

from __future__ import annotations

#: Every harness, by module name (``fuzz/<name>.py``, seeds in ``tests/data/fuzz/<name>/``).
HARNESSES = ("frames", "pairing_code", "app_messages", "relay_first_message", "file_chunks")
