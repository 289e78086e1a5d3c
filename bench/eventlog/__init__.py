"""Event log append rate: ``python -m bench.eventlog [--quick]``."""
