"""Only a session acts in itself, and one session cannot starve the others (11.14):
the real server on a real Unix socket, with the daemon's token check."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from starmux.daemon.sessions import SessionManager

from .local_api_support import SESSION, TOKEN, ask, checkpoint, serving

OTHER = "s-test-2"
OTHER_TOKEN = "another-sessions-token-0123456789abcdef"


def _tokens() -> dict[str, str]:
    return {SESSION: TOKEN, OTHER: OTHER_TOKEN}


def _authorize(session: str, token: str) -> bool:
    return _tokens().get(session) == token


async def test_a_wrong_or_missing_token_is_refused_before_the_handler(home: Path) -> None:
    async with serving(home, authorize=_authorize) as running:
        running.handler.sessions.add(OTHER)
        # Another session's token (any process of the user can read the socket).
        stolen = await ask(running.path, checkpoint(token=OTHER_TOKEN))
        assert stolen["ok"] is False and stolen["code"] == "refused"
        assert "not the token of session" in stolen["error"]
        missing = dict(checkpoint())
        del missing["token"]
        assert (await ask(running.path, missing))["code"] == "bad-request"
        cost = {"op": "cost", "session": SESSION, "token": OTHER_TOKEN, "input_tokens": 1}
        cost |= {"output_tokens": 0, "usd": 0}
        assert (await ask(running.path, cost))["code"] == "refused"
        assert running.handler.checkpoints == {} and running.handler.costs == []
        # The right token works.
        assert (await ask(running.path, checkpoint()))["decision"] == "approved"


async def test_waits_are_capped_per_session_not_globally(home: Path) -> None:
    async with serving(home, authorize=_authorize, waits_per_session=2) as running:
        running.handler.sessions.add(OTHER)
        running.handler.table["held"] = "hold"
        held = []
        for n in range(2):
            reader, writer = await asyncio.open_unix_connection(str(running.path))
            request = checkpoint(title="held", key=f"k{n}")
            writer.write(json.dumps(request).encode() + b"\n")
            held.append((reader, writer))
        while len(running.handler.checkpoints) < 2:
            running.handler.raised.clear()
            await running.handler.raised.wait()
        third = await ask(running.path, checkpoint(title="held", key="k3"))
        assert third["code"] == "busy" and "already wait in this session" in third["error"]
        # Another session is not affected by the first one's waits.
        other = await ask(running.path, checkpoint(session=OTHER, token=OTHER_TOKEN))
        assert other["decision"] == "approved"
        for checkpoint_id in ("c-1", "c-2"):
            running.handler.decide(checkpoint_id, "denied")
        for reader, writer in held:
            assert json.loads(await reader.readline())["decision"] == "denied"
            writer.close()
        # The slots are free again.
        assert (await ask(running.path, checkpoint()))["decision"] == "approved"


def test_the_session_manager_compares_tokens_per_session() -> None:
    manager = SessionManager.__new__(SessionManager)
    manager._tokens = {SESSION: TOKEN}
    assert manager.token_matches(SESSION, TOKEN)
    assert not manager.token_matches(SESSION, OTHER_TOKEN)
    assert not manager.token_matches(OTHER, TOKEN)
    assert not manager.token_matches(OTHER, "")
