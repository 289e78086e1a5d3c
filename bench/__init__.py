"""Benchmarks; run each from the repository root, e.g. ``python bench/relay.py``."""
