"""Shared test configuration: the hypothesis profile every run uses."""

from __future__ import annotations

import os

from hypothesis import settings

# "ci": enough examples to find something, still randomised (no derandomize: each run
# explores new inputs, and a failure prints the seed to reproduce it). No deadline:
# a single example that signs, verifies or packs 64 KiB can exceed 200 ms on a
# loaded machine, and a flaky timing failure teaches nothing.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
