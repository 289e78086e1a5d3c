"""The shared truth for the web controller's protocol modules (issue 15), made by the
Python core so the JavaScript mirror (web/proto) is checked against it byte for byte.

Writes two files (``python -m tests.web_golden --write``, from the checkout;
``tests/unit/test_web_golden.py`` fails when either is stale, so a Python wire change
cannot leave the JS side behind); the tables are built in :mod:`tests.golden`:

- ``web/proto/schema.js``: every message of the three codecs (CONTROL, APP, the
  device log's) as data: kind, version, the fields and their types. The JS codec
  decodes by it with the same strict rules.
- ``tests/data/web-golden.json``: wire tables the Node tests read: frames, every
  message kind encoded, mutated encodings with the Python verdict (accepted and
  re-encoded, or refused), transcripts, fingerprints, comparison codes, padding
  sizes, identity cards, a relay-auth exchange, a device log, pairing and link codes.

Deterministic: fixed keys and nonces, no clock.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: its parts are relative
    sys.exit("run it as a module, from the checkout: .venv/bin/python -m tests.web_golden --write")

from .golden.messages import messages_golden
from .golden.schema import schema_js
from .golden.tables import (
    codes_golden,
    crypto_golden,
    frames_golden,
    join_golden,
    live_window_golden,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_JS = ROOT / "web" / "proto" / "schema.js"
GOLDEN_JSON = ROOT / "tests" / "data" / "web-golden.json"


def golden() -> dict[str, Any]:
    return {
        "frames": frames_golden(),
        "messages": messages_golden(),
        "crypto": crypto_golden(),
        "codes": codes_golden(),
        "join": join_golden(),
        "live_window": live_window_golden(),
    }


def golden_json() -> str:
    return json.dumps(golden(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        print("usage: python -m tests.web_golden --write", file=sys.stderr)
        return 2
    SCHEMA_JS.write_text(schema_js())
    GOLDEN_JSON.write_text(golden_json())
    print(f"wrote {SCHEMA_JS.relative_to(ROOT)} and {GOLDEN_JSON.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
