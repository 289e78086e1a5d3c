"""The relay against a bare forwarder: ``python -m bench.relay [--quick]``."""
