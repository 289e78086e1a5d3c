"""Throughput of the end-to-end channel: ``python -m bench.channel``.

Measures, best of 3 runs of about a second each:

- transport: encrypt + decrypt of 1 KiB messages through a ``SecureChannel`` pair
  (default rekey interval), in messages/s and MiB/s of plaintext;
- handshakes: complete ``Noise_KK_25519_ChaChaPoly_BLAKE2b`` runs (both sides,
  fresh ephemerals, key checks) per second.

Numbers are for one core of this machine; compare runs, not machines.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from starmux.channel import SecureChannel
from starmux.noise import HandshakeState, KeyPair

KK = "Noise_KK_25519_ChaChaPoly_BLAKE2b"
MESSAGE = bytes(1024)


def kk_handshake(
    initiator_s: KeyPair, responder_s: KeyPair
) -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(KK, initiator=True, s=initiator_s, rs=responder_s.public)
    responder = HandshakeState(KK, initiator=False, s=responder_s, rs=initiator_s.public)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return initiator, responder


def best_rate(work: Callable[[int], None], batch: int, seconds: float, runs: int = 3) -> float:
    """Operations per second: the best of ``runs`` runs of about ``seconds`` each."""
    best = 0.0
    for _ in range(runs):
        done = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            work(batch)
            done += batch
        best = max(best, done / elapsed)
    return best


def transport_rate(seconds: float) -> float:
    initiator, responder = kk_handshake(KeyPair.generate(), KeyPair.generate())
    sender = SecureChannel.from_handshake(initiator)
    receiver = SecureChannel.from_handshake(responder)

    def work(batch: int) -> None:
        for _ in range(batch):
            receiver.decrypt(sender.encrypt(MESSAGE))

    return best_rate(work, batch=1000, seconds=seconds)


def handshake_rate(seconds: float) -> float:
    initiator_s, responder_s = KeyPair.generate(), KeyPair.generate()

    def work(batch: int) -> None:
        for _ in range(batch):
            kk_handshake(initiator_s, responder_s)

    return best_rate(work, batch=50, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=None, help="each run [1; --quick: 0.1]")
    parser.add_argument("--quick", action="store_true", help="short runs; figures mean little")
    args = parser.parse_args()
    seconds = args.seconds or (0.1 if args.quick else 1.0)

    messages_per_s = transport_rate(seconds)
    mib_per_s = messages_per_s * len(MESSAGE) / 2**20
    print(f"transport  1 KiB encrypt+decrypt: {messages_per_s:10,.0f} msg/s {mib_per_s:7.1f} MiB/s")
    print(f"handshake  {KK}: {handshake_rate(seconds):10,.0f} completions/s")


if __name__ == "__main__":
    main()
