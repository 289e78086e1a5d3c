"""Relay cluster benchmarks: ``python -m bench.cluster`` (see __main__)."""
