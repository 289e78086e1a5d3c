"""Fuzz :func:`starmux.pairing_code.parse_pairing_code` with arbitrary text.

People paste pairing codes from terminals, chats and screenshots, and ``argv`` can
carry lone surrogates (undecodable bytes), so the text is any unicode, from atheris'
``FuzzedDataProvider``. Only :class:`~starmux.errors.PairingCodeError` may escape; a
code it accepts must survive ``to_text()`` and parse again to the same code.

The input of :func:`check` (and of a crasher file) is that text as UTF-8 with
``surrogatepass``. Seeds are built to mean the same code to the fuzzer and to
:func:`check`: a tab first (an odd first byte: the data provider reads ASCII), a
newline last (no insertions, see :func:`fuzz.harness.fuzzed_text`), spaces before it
(bytes for insertions to consume), all stripped by ``parse_pairing_code``. The
``utf16-*`` seeds (first byte 2, then UTF-16-LE) are garbage to :func:`check`.

    python fuzz/pairing_code.py [-atheris_runs=N] [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.harness import MAX_INSERTIONS, KnownBug, Target, fuzz_main, fuzzed_text
from starmux.errors import PairingCodeError
from starmux.fingerprint import fingerprint
from starmux.pairing_code import MAX_CODE_LENGTH, PairingCode, parse_pairing_code


def to_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def from_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def check(data: bytes) -> None:
    text = to_text(data)
    try:
        code = parse_pairing_code(text)
    except PairingCodeError:
        return
    rendered = code.to_text()
    again = parse_pairing_code(rendered)
    assert again == code, f"{text!r} → {rendered!r} parses to a different code"
    assert again.to_text() == rendered, "to_text() is not a fixed point"


def reproducer(data: bytes) -> bytes:
    return from_text(fuzzed_text(data, 2 * MAX_CODE_LENGTH))


def seeds() -> dict[str, bytes]:
    code = PairingCode(
        "ws://127.0.0.1:8765",
        fingerprint(bytes(range(32))),
        bytes(range(16)),
        fingerprint(bytes(range(1, 33))),
        bytes(range(100, 132)),
    )
    text = code.to_text()
    mfp = code.machine_fingerprint
    variants = {
        "code": text,
        "code-tls-path": PairingCode(
            "wss://relay.example.com:443/starmux",
            code.relay_fingerprint,
            code.ticket,
            mfp,
            code.secret,
        ).to_text(),
        # Retyped fingerprints (lower case, dashes) and the parameters reordered.
        "code-retyped": text.replace(mfp.replace("-", ""), mfp.lower()),
        "code-reordered": "starmux://pair/v1?"
        + "&".join(reversed(text.removeprefix("starmux://pair/v1?").split("&"))),
        "code-pasted": f"  {text}\n",
    }
    padding = " " * 5 * MAX_INSERTIONS + "\n"
    found = {f"ascii-{name}": from_text(f"\t{value}{padding}") for name, value in variants.items()}
    for name in ("code", "code-tls-path"):
        found[f"utf16-{name}"] = b"\x02" + variants[name].encode("utf-16-le") + b"\n"
    return found


KNOWN_BUGS: tuple[KnownBug, ...] = ()

TARGET = Target("pairing_code", check, seeds, reproducer, KNOWN_BUGS)

if __name__ == "__main__":
    fuzz_main(TARGET)
