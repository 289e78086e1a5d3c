"""Reconnect storm and controller resync: ``python -m bench.storm [--quick]``."""
