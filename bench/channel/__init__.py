"""Noise channel transport and handshake rates: ``python -m bench.channel [--quick]``."""
