"""Benchmarks, one subpackage per suite; run each from the repository root as
``python -m bench.X`` (``--quick``: a scaled-down smoke run, which
``tests/integration/test_bench_smoke.py`` runs for every suite):

- ``bench.relay``: the relay against a bare forwarder (throughput, latency, memory,
  a stalled reader);
- ``bench.e2e``: controller ⇄ relay ⇄ N daemons against the bare forwarder;
- ``bench.storm``: a reconnect storm through a relay restart, and controller resync;
- ``bench.sessions``: a chatty session and approve latency through every real part;
- ``bench.eventlog``: the daemon's event log append rate;
- ``bench.channel``: the Noise channel's transport and handshake rates;
- ``bench.padding``: what padding live-channel messages into size buckets costs.

``bench.common`` holds what several suites share (processes, the minimal WebSocket
client, the results file). Benchmarks drive the shipped code only: nothing here
patches the product.
"""
