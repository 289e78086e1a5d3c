"""``ControllerState.stream_session`` (what ``starmux watch`` prints) on a real cache:
an end applied while earlier output is being sent still comes with all the output
before it. (Found by the rolling-restart test: a watch exited 0 after 8,374 of
10,000 lines when the rest and the end arrived in one batch mid-send.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nacl.utils

from starmux.client.cache import Cache
from starmux.client.sessions import ControllerState
from starmux.client.store import ControllerConfig, ControllerStore
from starmux.identity import NodeKeys, Role
from starmux.messages import EventPage, LoggedEvent, SessionCreated, SessionStatusChanged
from starmux.session_state import Status

from .test_cache import SESSION, logged
from .test_cache import output as line


async def test_an_end_applied_mid_send_comes_after_all_the_output(tmp_path: Path) -> None:
    store = ControllerStore(tmp_path / "home")
    await store.open()
    try:
        store.keys(create=True)
        machine = NodeKeys.generate()
        await store.add_machine(machine.card(Role.MACHINE, "box"))
        key = machine.sign_public
        config = ControllerConfig("ws://127.0.0.1:1", nacl.utils.random(32), b"\x01" * 16, "l")
        state = ControllerState(store, config, store.keys(), Cache(store.db))

        async def apply(*events: LoggedEvent) -> None:
            # As the agent does: one transaction, then the watchers are woken.
            applied = await state.cache.apply_page(key, EventPage("e1", events, False, True))
            for event in applied.events:
                state.on_event(key, event)

        created = SessionCreated(("make",), "/src", "build", False, "c-1")
        await apply(logged(1, created), logged(2, SessionStatusChanged(Status.RUNNING, None, "")))
        await apply(line(3))
        sent: list[tuple[str, int]] = []

        async def send(kind: str, seq: int, payload: Any) -> None:
            sent.append((kind, seq))
            if seq == 3:  # the rest of the output and the end land while line 3 goes out
                await apply(
                    line(4), line(5), logged(6, SessionStatusChanged(Status.SUCCEEDED, 0, ""))
                )

        row = await state.stream_session(SESSION, send, follow=True)

        assert row.status == "succeeded"
        # (No relay here: between the passes the watch also says the machine is away.)
        events = [item for item in sent if item[0] != "notice"]
        assert events == [("status", 2), ("output", 3), ("output", 4), ("output", 5), ("status", 6)]
        assert SESSION not in state.watchers  # its wake-up is dropped when it returns
    finally:
        await store.close()
