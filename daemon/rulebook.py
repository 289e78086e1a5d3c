"""The machine's approval rules: set and removed by devices, matched at every checkpoint.

Matching is :mod:`starmux.approval_rules` (deny wins, allows never reach past what
they say); this module stores the rules and logs their changes. Invariants:
- A rule and its ``approval-rule-set`` event are written in one transaction (the
  event log's ``also``), so every controller that syncs sees exactly the rules the
  daemon applies; removal likewise.
- A rule belongs to one session and dies with it: only a running session's
  checkpoints are ever matched, and a rule cannot be set on a session that ended.
- Rules are read from the database at each match (no cache to go stale across a
  restart or a concurrent removal): a removed rule answers nothing from then on.
- A rule speaks for the device that set it only while that device may still set it:
  once it is removed from the account or its role no longer allows rules (and the
  rule's approve or deny), its rules answer nothing (a person is asked again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starmux.approval_rules import Effect, Rule, RulePattern, Subject, verdict
from starmux.checkpoint_preview import MAX_SUBJECT, CheckpointPreview, PreviewKind
from starmux.device_roles import Action, DeviceRole, action_for_decision, allowed
from starmux.errors import UsageError
from starmux.messages import APP
from starmux.review_messages import ApprovalRuleRemoved, ApprovalRuleSet

from .eventlog import EventLog
from .sessions import SessionManager

MAX_RULES_PER_SESSION = 100


@dataclass(frozen=True)
class StoredRule:
    rule: Rule
    session: str


class Rulebook:
    def __init__(self, log: EventLog, sessions: SessionManager) -> None:
        self.log = log
        self.sessions = sessions
        #: The device log's word on a key (daemon/devices.py), wired by the live
        #: service; None (tests of this module alone): every setter counts.
        self.role_of: Callable[[bytes], Awaitable[DeviceRole | None]] | None = None

    async def set(
        self, rule_id: str, session: str, pattern: str, effect: Effect, *, by: bytes, now: float
    ) -> str:
        parsed = RulePattern.parse(pattern)
        existing = await self.log.execute_read(
            "SELECT session, pattern, effect FROM approval_rules WHERE id = ?", (rule_id,)
        )
        if existing:  # the same command delivered twice is acked, not applied twice
            return rule_id
        self.sessions.live(session)  # raises for a session that is not running here
        count = await self.log.execute_read(
            "SELECT COUNT(*) FROM approval_rules WHERE session = ? AND removed_at IS NULL",
            (session,),
        )
        if count[0][0] >= MAX_RULES_PER_SESSION:
            raise UsageError(
                f"session {session} already has {MAX_RULES_PER_SESSION} rules",
                hint="remove some with `starmux rules remove ID`",
            )
        event = ApprovalRuleSet(rule_id, str(parsed), effect, by)
        await self.log.append(
            session,
            APP.encode(event),
            at=now,
            also=[
                (
                    "INSERT INTO approval_rules (id, session, pattern, effect, set_by, set_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (rule_id, session, str(parsed), effect.value, by, now),
                )
            ],
        )
        return rule_id

    async def remove(self, rule_id: str, *, by: bytes, now: float) -> str:
        rows = await self.log.execute_read(
            "SELECT session, removed_at FROM approval_rules WHERE id = ?", (rule_id,)
        )
        if not rows:
            raise UsageError(
                f"no rule {rule_id} on this machine", hint="see `starmux rules SESSION`"
            )
        session, removed_at = rows[0]
        if removed_at is not None:
            return rule_id
        await self.log.append(
            session,
            APP.encode(ApprovalRuleRemoved(rule_id, by)),
            at=now,
            also=[
                (
                    "UPDATE approval_rules SET removed_at = ?, removed_by = ? "
                    "WHERE id = ? AND removed_at IS NULL",
                    (now, by, rule_id),
                )
            ],
        )
        return rule_id

    async def _speaks(self, rule: Rule) -> bool:
        if self.role_of is None:
            return True
        role = await self.role_of(rule.set_by)
        decision = action_for_decision(rule.effect is Effect.ALLOW)
        return allowed(role, Action.RULES) and allowed(role, decision)

    async def rules(self, session: str) -> list[Rule]:
        rows = await self.log.execute_read(
            "SELECT id, pattern, effect, set_by FROM approval_rules "
            "WHERE session = ? AND removed_at IS NULL ORDER BY set_at",
            (session,),
        )
        return [
            Rule(rule_id, RulePattern.parse(pattern), Effect(effect), bytes(by))
            for rule_id, pattern, effect, by in rows
        ]

    async def answer(self, session: str, preview: CheckpointPreview | None) -> Rule | None:
        """The rule that answers a checkpoint of ``session`` with this preview, if any.

        Relative path patterns are matched against the session's own cwd (what the
        person who set the rule saw), never a cwd the agent claims. A command the
        preview had to cut is never allowed by a rule (its unseen tail could hold
        anything); deny rules still apply to it."""
        if preview is None or not preview.tool:
            return None
        rows = await self.log.execute_read("SELECT cwd FROM sessions WHERE id = ?", (session,))
        cwd = rows[0][0] if rows else ""
        rules = [rule for rule in await self.rules(session) if await self._speaks(rule)]
        cut = len(preview.subject) >= MAX_SUBJECT or (
            preview.type is PreviewKind.COMMAND and preview.truncated
        )
        if cut:
            rules = [rule for rule in rules if rule.effect is Effect.DENY]
        return verdict(rules, Subject(preview.tool, preview.subject, cwd))
