"""What padding live-channel messages costs: ``python -m bench.padding [--quick]``."""
