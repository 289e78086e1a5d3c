"""What ``starmux notify ...`` does inside the controller agent.

The device's targets are registered with every machine it knows (each machine sends
its own notifications: DESIGN.md section 11), as outbox commands, so a machine that
is offline now gets them when it is back. This device keeps its own list (the URL
stays in the controller's home, 0600); how each target fares on each machine comes
from the machines' ``notify-status`` events in the cache (stream ``notify``), so
``notify list`` works offline too and never waits on a machine.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from starmux.codec import Message
from starmux.errors import StarmuxError
from starmux.messages import APP
from starmux.node.database import read_setting, write_setting
from starmux.notify_delivery import check_webhook_url, describe_url
from starmux.notify_messages import (
    NotifySettings,
    NotifyStatus,
    NotifyTarget,
    NotifyTargetRemove,
    NotifyTest,
)
from starmux.notify_rules import ALL_KINDS, ContentLevel, NotifyKind, TargetKind

from .cache import Cache
from .sessions import ControllerState, OperationFailed
from .store import ControllerStore

_TARGETS = "notify_targets"
NOTIFY_STREAM = "notify"


async def _targets(state: ControllerState) -> dict[str, dict[str, Any]]:
    raw = await read_setting(state.store.db, _TARGETS)
    stored = json.loads(raw) if raw else {}
    return stored if isinstance(stored, dict) else {}


async def _save(state: ControllerState, targets: dict[str, dict[str, Any]]) -> None:
    await write_setting(state.store.db, _TARGETS, json.dumps(targets).encode())


async def _to_machines(
    state: ControllerState, command: Message, machine: str | None
) -> list[dict[str, Any]]:
    machines = (
        [await state.store.find_machine(machine)] if machine else await state.store.machines()
    )
    if not machines:
        raise OperationFailed(
            "not-found", "no machine is paired yet", "pair one first: starmux pair CODE"
        )
    return [await state.issue(m, command) for m in machines]


def _failed(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in replies if r.get("accepted") is False]


async def add_target(
    state: ControllerState, *, kind: str, url: str, content: str, machine: str | None
) -> dict[str, Any]:
    try:
        target_kind, level = TargetKind(kind), ContentLevel(content)
    except ValueError as exc:
        raise OperationFailed("bad-request", str(exc)) from None
    if target_kind is TargetKind.WEBHOOK:
        try:
            check_webhook_url(url)
        except StarmuxError as exc:
            raise OperationFailed("bad-request", exc.message, exc.hint or "") from None
    elif url:
        raise OperationFailed("bad-request", "a push target has no URL")
    targets = await _targets(state)
    # One target per URL (and one push target): adding it again updates it.
    same = [i for i, t in targets.items() if t.get("kind") == kind and t.get("url") == url]
    target_id = same[0] if same else ("w-" if kind == "webhook" else "p-") + secrets.token_hex(4)
    command = NotifyTarget(target_id, target_kind, url, level)
    replies = await _to_machines(state, command, machine)
    if len(_failed(replies)) == len(replies):
        first = replies[0]
        raise OperationFailed("refused", first.get("error") or "refused", first.get("hint") or "")
    targets[target_id] = {"kind": kind, "url": url, "content": content, "created_at": time.time()}
    await _save(state, targets)
    return {"target": target_id, "machines": replies}


async def remove_target(state: ControllerState, target_id: str) -> dict[str, Any]:
    targets = await _targets(state)
    if target_id not in targets:
        raise OperationFailed(
            "not-found", f"no notification target {target_id!r}", "see `starmux notify list`"
        )
    replies = await _to_machines(state, NotifyTargetRemove(target_id), None)
    del targets[target_id]
    await _save(state, targets)
    return {"target": target_id, "machines": replies}


async def test(state: ControllerState, target_id: str) -> dict[str, Any]:
    targets = await _targets(state)
    if target_id and target_id not in targets:
        raise OperationFailed(
            "not-found", f"no notification target {target_id!r}", "see `starmux notify list`"
        )
    if not targets:
        raise OperationFailed(
            "not-found", "no notification target yet", "add one: starmux notify webhook URL"
        )
    return {"machines": await _to_machines(state, NotifyTest(target_id), None)}


async def settings(
    state: ControllerState, *, kinds: list[str], reminder: float, machine: str | None
) -> dict[str, Any]:
    try:
        wanted = tuple(sorted(NotifyKind(k) for k in kinds)) if kinds else tuple(sorted(ALL_KINDS))
    except ValueError:
        names = ", ".join(sorted(ALL_KINDS))
        raise OperationFailed("bad-request", f"kinds are {names}") from None
    if NotifyKind.TEST in wanted:
        raise OperationFailed("bad-request", "test notifications cannot be turned off or on")
    if not 0 < reminder < 1:
        raise OperationFailed("bad-request", "--reminder is a fraction between 0 and 1")
    command = NotifySettings(wanted, reminder)
    return {
        "kinds": list(wanted),
        "reminder": reminder,
        "machines": await _to_machines(state, command, machine),
    }


async def listing(state: ControllerState) -> dict[str, Any]:
    return {"targets": await target_rows(state.store, state.cache, state.keys.sign_public)}


async def target_rows(store: ControllerStore, cache: Cache, me: bytes) -> list[dict[str, Any]]:
    """This device's targets, each with its latest status from every machine (from the
    cache alone: ``starmux doctor`` reads it without the agent)."""
    raw = await read_setting(store.db, _TARGETS)
    targets: dict[str, dict[str, Any]] = json.loads(raw) if raw else {}
    statuses: dict[str, list[dict[str, Any]]] = {target_id: [] for target_id in targets}
    for machine in await store.machines():
        latest: dict[str, tuple[float, NotifyStatus]] = {}
        for event in await cache.session_events(NOTIFY_STREAM, machine=machine.key):
            try:
                status = APP.decode(event.body)
            except StarmuxError:
                continue
            if isinstance(status, NotifyStatus) and status.device == me:
                latest[status.target] = (event.at, status)
        for target_id in targets:
            found = latest.get(target_id)
            row: dict[str, Any] = {"machine": machine.name, "state": "pending"}
            if found is not None:
                at, status = found
                row = {
                    "machine": machine.name,
                    "state": status.state.value,
                    "detail": status.detail,
                    "delivered": status.delivered,
                    "failed": status.failed,
                    "at": at,
                }
            statuses[target_id].append(row)
    return [
        {
            "id": target_id,
            "kind": t.get("kind"),
            "content": t.get("content"),
            "url": describe_url(t["url"]) if t.get("url") else "",
            "machines": statuses[target_id],
        }
        for target_id, t in sorted(targets.items(), key=lambda item: item[1].get("created_at", 0))
    ]


async def run(state: ControllerState, op: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The agent's ``notify-*`` operations (grammar: :data:`starmux.agent_protocol.OPS`)."""
    if op == "notify-target":
        return await add_target(state, **fields)
    if op == "notify-list":
        return await listing(state)
    if op == "notify-remove":
        return await remove_target(state, fields["target"])
    if op == "notify-test":
        return await test(state, fields["target"])
    if op == "notify-settings":
        return await settings(state, **fields)
    raise OperationFailed("bad-request", f"op {op!r} is not handled")
