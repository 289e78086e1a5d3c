"""Review operations of the controller agent (issue 19): one checkpoint in full,
approval scopes (``approve --for-session``), rules, and a session's diff.

Functions over the agent's :class:`~starmux.client.sessions.ControllerState`, kept out
of it so that module stays about sessions. Invariants:
- ``--for-session`` sets the rule first, then signs the decision of the checkpoint at
  hand: both go through the outbox in that order, so the machine never sees the
  decision without the rule the person asked for. A refused rule stops there: no
  decision is sent (the person asked for both, not for half). The machine applies a
  new rule to the session's waiting checkpoints too, the one at hand included: the
  signed decision then agrees with the rule's answer and is acked as that verdict.
- A rule is checked here (it parses, the checkpoint is still pending) and again by
  the machine, which is what applies it.
- Everything a machine sent comes back as data; the CLI escapes it.
"""

from __future__ import annotations

import secrets
from typing import Any

from starmux import worktree_diff
from starmux.approval_rules import Effect, RulePattern, Subject, default_pattern
from starmux.errors import UsageError
from starmux.fingerprint import fingerprint
from starmux.review_messages import RemoveApprovalRule, SetApprovalRule, ShowDiff

from .cache import CheckpointRow
from .session_views import checkpoint_json
from .sessions import ControllerState, OperationFailed


async def _checkpoint(state: ControllerState, checkpoint_id: str) -> CheckpointRow:
    row = await state.cache.checkpoint(checkpoint_id)
    if row is None:
        raise OperationFailed(
            "not-found", f"no checkpoint {checkpoint_id!r} known here", "see `starmux approvals`"
        )
    return row


async def approval(state: ControllerState, checkpoint_id: str) -> dict[str, Any]:
    """One checkpoint, whole: preview, and its decision if it has one."""
    row = await _checkpoint(state, checkpoint_id)
    entry = checkpoint_json(row, await state.machine_names())
    entry.update(
        decision=row.decision,
        decided_by=fingerprint(row.decided_by) if row.decided_by else None,
        reason=row.reason,
    )
    return {"approval": entry}


async def _rule_pattern(state: ControllerState, row: CheckpointRow, rule: str | None) -> str:
    try:
        if rule is not None:
            return str(RulePattern.parse(rule))
        preview = row.preview_json()
        if preview is None:
            raise UsageError(
                "this checkpoint carries no preview, so no rule can match it",
                hint="approve it once (without --for-session)",
            )
        session = await state.cache.session(row.session, row.machine)
        cwd = session.cwd if session is not None else preview["cwd"]
        return str(default_pattern(Subject(preview["tool"], preview["subject"], cwd)))
    except UsageError as exc:
        raise OperationFailed("bad-request", exc.message, exc.hint or "") from exc


async def decide(
    state: ControllerState,
    checkpoint: str,
    *,
    approve: bool,
    reason: str,
    for_session: bool = False,
    rule: str | None = None,
) -> dict[str, Any]:
    if not for_session and rule is None:
        return await state.decide(checkpoint, approve=approve, reason=reason)
    row = await _checkpoint(state, checkpoint)
    if row.decision is not None:
        raise OperationFailed(
            "too-late", f"too late: checkpoint {checkpoint} was already {row.decision}"
        )
    pattern = await _rule_pattern(state, row, rule)
    machine = await state.machine_by_key(row.machine)
    rule_id = "r-" + secrets.token_hex(5)
    effect = Effect.ALLOW if approve else Effect.DENY
    command = SetApprovalRule(rule_id, row.session, pattern, effect)
    set_rule = await state.issue(machine, command)
    rule_json = {"id": rule_id, "pattern": pattern, "effect": effect.value}
    if set_rule["accepted"] is False:
        return {"checkpoint": checkpoint, "rule": rule_json, **set_rule}
    decided = await state.decide(checkpoint, approve=approve, reason=reason)
    return {**decided, "rule": rule_json}


async def rules(state: ControllerState, session_id: str) -> dict[str, Any]:
    session = await state.known_session(session_id)
    rows = await state.cache.db.execute_fetchall(
        "SELECT id, session, pattern, effect, set_by, set_at FROM approval_rules "
        "WHERE machine = ? AND session = ? AND removed_at IS NULL ORDER BY set_at",
        (session.machine, session.id),
    )
    names = await state.machine_names()
    return {
        "rules": [
            {
                "id": r[0],
                "machine": names.get(session.machine, session.machine.hex()),
                "session": r[1],
                "pattern": r[2],
                "effect": r[3],
                "set_by": fingerprint(bytes(r[4])),
                "set_at": r[5],
            }
            for r in rows
        ]
    }


async def remove_rule(state: ControllerState, rule_id: str) -> dict[str, Any]:
    rows = list(
        await state.cache.db.execute_fetchall(
            "SELECT machine FROM approval_rules WHERE id = ? AND removed_at IS NULL", (rule_id,)
        )
    )
    if not rows:
        raise OperationFailed(
            "not-found", f"no rule {rule_id!r} in force here", "see `starmux rules SESSION`"
        )
    if len(rows) > 1:
        raise OperationFailed("refused", f"{len(rows)} machines claim the rule id {rule_id!r}")
    machine = await state.machine_by_key(bytes(rows[0][0]))
    return {"rule": rule_id, **await state.issue(machine, RemoveApprovalRule(rule_id))}


async def diff(state: ControllerState, *, session: str, stat: bool) -> dict[str, Any]:
    row = await state.known_session(session)
    machine = await state.machine_by_key(row.machine)
    reply = await state.issue(machine, ShowDiff(row.id, stat))
    if reply["queued"]:
        raise OperationFailed(
            "unavailable",
            f"{machine.name} did not answer in time (offline?)",
            "the diff is computed on the machine: try again when it is online",
        )
    if not reply["accepted"]:
        raise OperationFailed("refused", reply["error"] or "refused", reply["hint"] or "")
    try:
        report = worktree_diff.decode(reply["result"] or "")
    except UsageError as exc:
        raise OperationFailed("refused", exc.message) from exc
    return {"session": row.id, "machine": machine.name, **worktree_diff.to_json(report)}
