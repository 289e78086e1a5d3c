"""The web controller's shared truth is current: web/proto/schema.js and
tests/data/web-golden.json are what ``python -m tests.web_golden`` makes from the Python core now.

Node's tests (``node --test web/test/``) check the JavaScript modules against the same
two files, so a wire change in Python that is not mirrored in JS fails one of the two.
"""

from __future__ import annotations

import json

from .. import web_golden
from ..golden.messages import messages_golden
from ..golden.schema import schema_js


def test_the_schema_is_the_python_codecs() -> None:
    assert web_golden.SCHEMA_JS.read_text() == schema_js(), (
        "web/proto/schema.js is stale: run .venv/bin/python -m tests.web_golden --write"
    )


def test_the_golden_tables_are_the_python_core() -> None:
    stored = json.loads(web_golden.GOLDEN_JSON.read_text())
    fresh = json.loads(web_golden.golden_json())
    for part in fresh:
        assert stored[part] == fresh[part], (
            f"tests/data/web-golden.json ({part}) is stale: "
            "run .venv/bin/python -m tests.web_golden --write"
        )


def test_the_tables_hold_refusals_and_acceptances() -> None:
    table = messages_golden()
    accepted = sum(entry["ok"] for entry in table)
    assert accepted > 100 and len(table) - accepted > 1000
