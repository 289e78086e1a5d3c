"""End to end, controller ⇄ relay ⇄ N daemons: ``python -m bench.e2e [--quick]``."""
