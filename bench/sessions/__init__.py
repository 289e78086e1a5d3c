"""Chatty session and approve latency: ``python -m bench.sessions [--quick]``."""
