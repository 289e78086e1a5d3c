"""What padding live-channel messages costs: ``python -m bench.padding [--quick]``.

For each message the live channel really carries (their APP encodings), and for
uniformly spread sizes, prints:

- bytes: the padded plaintext against the unpadded one (``starmux.padding``:
  Padmé buckets from 256 B), next to what powers of two from 256 B would cost;
- sizes leaked: how many distinct sizes the relay can see for plaintexts up to
  the largest APP message;
- CPU: microseconds per message for encrypt + decrypt through a real
  ``Noise_KK`` channel pair, unpadded and padded (best of 3 runs), and for
  pad + unpad alone (best of 5), which is the padding's own cost (the padded
  channel also encrypts the extra bytes).

Numbers are for one core of this machine; compare runs, not machines.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from starmux import padding
from starmux.channel import SecureChannel
from starmux.messages import (
    APP,
    CommandAck,
    EventPage,
    LoggedEvent,
    Output,
    OutputStream,
    SyncRequest,
)
from starmux.noise import HandshakeState, KeyPair

KK = "Noise_KK_25519_ChaChaPoly_BLAKE2b"


def _event(data: bytes, seq: int = 1) -> LoggedEvent:
    return LoggedEvent(seq, 1.7e9, "s-0123456789abcdef", APP.encode(Output(OutputStream.PTY, data)))


#: Messages as the live channel sends them (the live path wraps each event in a page).
SAMPLES: dict[str, bytes] = {
    "command ack": APP.encode(CommandAck("c-0123456789abcdef0123", True, "", "", "s-1")),
    "sync request": APP.encode(SyncRequest("e" * 32, 1234, 500)),
    "keystroke echo (1 B)": APP.encode(EventPage("e" * 32, (_event(b"x"),), False, True)),
    "output line (80 B)": APP.encode(EventPage("e" * 32, (_event(bytes(80)),), False, True)),
    "output 1 KiB": APP.encode(EventPage("e" * 32, (_event(bytes(1024)),), False, True)),
    "output chunk 16 KiB": APP.encode(EventPage("e" * 32, (_event(bytes(16384)),), False, True)),
    "sync page ~60 KiB": APP.encode(
        EventPage("e" * 32, tuple(_event(bytes(1024), n) for n in range(1, 53)), True, False)
    ),
}


def power_of_two(length: int) -> int:
    """The alternative measured against: powers of two from 256 B."""
    return min(padding.MAX_PADDED, max(256, 1 << (length + 2 - 1).bit_length()))


def channel_pair(pad: bool) -> tuple[SecureChannel, SecureChannel]:
    i_s, r_s = KeyPair.generate(), KeyPair.generate()
    initiator = HandshakeState(KK, initiator=True, s=i_s, rs=r_s.public)
    responder = HandshakeState(KK, initiator=False, s=r_s, rs=i_s.public)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return (
        SecureChannel.from_handshake(initiator, pad=pad),
        SecureChannel.from_handshake(responder, pad=pad),
    )


def micros_per_message(plaintext: bytes, pad: bool, count: int) -> float:
    """Best of 3: microseconds for one encrypt + decrypt."""
    sender, receiver = channel_pair(pad)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            receiver.decrypt(sender.encrypt(plaintext))
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def micros_to_pad(plaintext: bytes, count: int) -> float:
    """Best of 5: microseconds for pad + unpad alone (the padding's own work)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            padding.unpad(padding.pad(plaintext))
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    args = parser.parse_args()
    count = 50 if args.quick else 2000

    print(
        f"{'message':<22}{'plain B':>9}{'padded B':>10}{'+%':>7}{'pow2 B':>9}{'+%':>7}"
        f"{'µs plain':>10}{'µs padded':>11}{'µs pad':>8}"
    )
    for name, plaintext in SAMPLES.items():
        size = len(plaintext)
        padded, pow2 = padding.padded_size(size), power_of_two(size)
        plain_us = micros_per_message(plaintext, False, count)
        padded_us = micros_per_message(plaintext, True, count)
        print(
            f"{name:<22}{size:>9}{padded:>10}{100 * (padded - size) / size:>7.1f}"
            f"{pow2:>9}{100 * (pow2 - size) / size:>7.1f}"
            f"{plain_us:>10.1f}{padded_us:>11.1f}{micros_to_pad(plaintext, count * 5):>8.2f}"
        )

    largest = APP._max_size  # the largest APP message the live channel can carry
    rng = random.Random(1)
    spread = [rng.randrange(1, largest) for _ in range(2000 if args.quick else 100_000)]
    padme_over = statistics.fmean(padding.padded_size(n) / n - 1 for n in spread)
    pow2_over = statistics.fmean(power_of_two(n) / n - 1 for n in spread)
    big = [n for n in spread if n >= 1024]
    padme_big = max(padding.padded_size(n) / n - 1 for n in big)
    pow2_big = max(power_of_two(n) / n - 1 for n in big)
    padme_sizes = len({padding.padded_size(n) for n in range(largest + 1)})
    pow2_sizes = len({power_of_two(n) for n in range(largest + 1)})
    print()
    print(
        f"uniform sizes 1 B..{largest} B: mean overhead Padmé {100 * padme_over:.1f} %, "
        f"powers of two {100 * pow2_over:.1f} %"
    )
    print(
        f"worst overhead from 1 KiB up: Padmé {100 * padme_big:.1f} %, "
        f"powers of two {100 * pow2_big:.1f} %"
    )
    print(
        f"distinct sizes the relay can see: Padmé {padme_sizes}, powers of two {pow2_sizes}, "
        f"unpadded {largest + 1}"
    )


if __name__ == "__main__":
    main()
