"""Checkpoints: an agent asks, a controller decides (signed), first answer wins.

The rules live in :mod:`starmux.checkpoint_state`; this module feeds it the stored
row and writes what it returns. Invariants:
- A checkpoint is in the durable log (``CheckpointRaised``) before anyone can see
  it, and its decision (``CheckpointDecided``) is written with the checkpoint row
  and the command record in one transaction, guarded by "the row is still
  pending" (the guarded update must change exactly one row, else nothing of the
  write commits): a decision is applied and logged at most once, even when a
  controller's answer and the expiry timer read the pending row at the same time.
- The first decision wins; a later one (or one after expiry) is answered "too late"
  naming what happened first; the loser of a race learns it by re-reading.
- A session is ``waiting_approval`` exactly while one of its checkpoints is
  pending (status changes and the pending check run under one lock).
- A decision counts only with a valid signature by a current device; anything
  else is refused and written to the audit log.
- On expiry the checkpoint's default applies (deny unless set).
- A checkpoint that an approval rule of its session answers (:mod:`.rulebook`) is
  logged like any other, then decided at once by the rule: ``checkpoint-decided``
  names the device that set the rule, the reason and the audit row name the rule.
- A rule set while checkpoints of its session wait answers those it matches too
  (:meth:`Checkpoints.answer_pending`), each audited as the rule's. The checkpoint
  whose ``approve --for-session`` set the rule is among them: the person's signed
  decision that follows, agreeing with what their own rule just answered, is
  acknowledged as that verdict rather than "too late" (same device, same answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable

from starmux import checkpoint_state
from starmux.approval_rules import Effect, Rule
from starmux.checkpoint_preview import CheckpointPreview
from starmux.checkpoint_state import Answer, Checkpoint, CheckpointState
from starmux.decisions import Verdict, decision_transcript
from starmux.errors import CryptoError, UsageError
from starmux.fingerprint import fingerprint
from starmux.identity import verify_signature
from starmux.local_api import CheckpointOutcome
from starmux.messages import (
    APP,
    CheckpointDecided,
    CheckpointRaised,
    CostReported,
    DecideCheckpoint,
)
from starmux.session_state import Status

from .eventlog import EventLog, EventLogError, GuardFailed, Statement
from .rulebook import Rulebook
from .sessions import SessionManager, command_record
from .store import DaemonStore


class TooLate(UsageError):
    """The checkpoint was decided before this answer (see :mod:`starmux.checkpoint_state`)."""


def _too_late_text(checkpoint: Checkpoint, name: str | None) -> str:
    if not checkpoint.decided_by:
        who = "its default on expiry"
    else:
        who = fingerprint(checkpoint.decided_by)
        who = f"{name} ({who})" if name else who
    when = time.strftime("%H:%M:%S", time.localtime(checkpoint.decided_at or 0))
    return f"too late: checkpoint {checkpoint.id} was already {checkpoint.state} by {who} at {when}"


class Checkpoints:
    def __init__(
        self,
        log: EventLog,
        sessions: SessionManager,
        store: DaemonStore,
        *,
        machine_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.sessions = sessions
        self.store = store
        self.machine_key = machine_key
        self.clock = clock
        self._waiters: dict[str, asyncio.Future[CheckpointOutcome]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        #: checkpoint → (session, preview) while it waits: what a rule set later matches
        self._previews: dict[str, tuple[str, CheckpointPreview]] = {}
        #: Held while a session's waiting/running status follows its pending checkpoints.
        self._status = asyncio.Lock()
        #: Who may sign decisions: the account's current devices (daemon/devices.py);
        #: until that is wired in, the controllers that paired this machine.
        self.is_device: Callable[[bytes], Awaitable[bool]] | None = None
        #: The name a device goes by in the account's device log (for "too late").
        self.device_name: Callable[[bytes], Awaitable[str | None]] | None = None
        self.rules = Rulebook(log, sessions)

    # --- the local API side (an agent asks) --------------------------------------------

    async def checkpoint(
        self,
        *,
        session: str,
        title: str,
        body: str,
        timeout: float,  # noqa: ASYNC109 (the checkpoint's lifetime, not a call timeout)
        default_approve: bool,
        key: str | None,
        preview: CheckpointPreview | None = None,
    ) -> CheckpointOutcome:
        live = self.sessions.live(session)
        checkpoint_id = self._by_key.get((session, key)) if key else None
        rule: Rule | None = None
        if checkpoint_id is None:
            checkpoint_id = "c-" + secrets.token_hex(5)
            rule = await self.rules.answer(session, preview)
            now = self.clock()
            raised = CheckpointRaised(
                checkpoint_id, title, body, now + timeout, default_approve, preview
            )
            insert: Statement = (
                "INSERT INTO checkpoints (id, session, title, body, created_at, "
                "expires_at, default_approve) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (checkpoint_id, session, title, body, now, now + timeout, int(default_approve)),
            )
            # The waiter exists before the row is visible, so no answer can miss it.
            self._waiters[checkpoint_id] = asyncio.get_running_loop().create_future()
            try:
                # Under the status lock: a decision of another checkpoint must not read
                # "nothing pending" between this status change and this row's commit.
                async with self._status:
                    if live.status is Status.RUNNING and rule is None:
                        await self.sessions.transition(live, Status.WAITING_APPROVAL, None, title)
                    await self.log.append(session, APP.encode(raised), at=now, also=[insert])
            except BaseException:
                self._waiters.pop(checkpoint_id, None)
                raise
            self._timers[checkpoint_id] = asyncio.get_running_loop().call_later(
                timeout, lambda: asyncio.ensure_future(self.expire(checkpoint_id))
            )
            if key:
                self._by_key[(session, key)] = checkpoint_id
            if rule is not None:
                await self._by_rule(checkpoint_id, session, rule)
            elif preview is not None:
                self._previews[checkpoint_id] = (session, preview)
        waiter = self._waiters.get(checkpoint_id)
        if waiter is None:  # decided already (a retried call with the same key)
            return await self._outcome(checkpoint_id)
        return await asyncio.shield(waiter)

    async def cost(
        self, *, session: str, input_tokens: int, output_tokens: int, usd: float, note: str
    ) -> None:
        await self.sessions.report_cost(
            session, CostReported(input_tokens, output_tokens, usd, note)
        )

    # --- the controller side (a signed decision arrives) ------------------------------

    async def decide(
        self, command_id: str, decision: DecideCheckpoint, *, controller_key: bytes
    ) -> str:
        """Apply a decision; returns a short result text. Raises UsageError/TooLate."""
        await self._verify(decision, controller_key)
        step = await self._answer(
            decision.checkpoint,
            Answer.APPROVE if decision.approve else Answer.DENY,
            by=controller_key,
            reason=decision.reason,
            decided_at=decision.decided_at,
            signature=decision.signature,
            command_id=command_id,
        )
        if step is None:
            raise UsageError(f"no checkpoint {decision.checkpoint} on this machine")
        if isinstance(step, checkpoint_state.TooLate) and await self._agrees_with_own_rule(
            step, decision.approve, controller_key
        ):
            verdict = step.checkpoint.state.value
            record = command_record(command_id, True, "", "", verdict, self.clock())
            await self.log.execute_write([record])
            return verdict
        if isinstance(step, checkpoint_state.TooLate):
            first = step.checkpoint.decided_by
            name = await self.device_name(first) if first and self.device_name else None
            raise TooLate(_too_late_text(step.checkpoint, name))
        verdict = step.verdict.value
        await self.store.audit(
            f"checkpoint.{verdict}",
            actor=controller_key,
            detail=f"checkpoint {decision.checkpoint} of session {step.checkpoint.session}",
            now=self.clock(),
        )
        self._resolve(
            decision.checkpoint,
            CheckpointOutcome(
                decision.checkpoint, verdict, decision.reason, fingerprint(controller_key)
            ),
        )
        return verdict

    async def answer_pending(self, session: str) -> list[str]:
        """After a rule of ``session`` was set: answer its waiting checkpoints that the
        rules now answer (deny still wins); returns their ids, in the order raised."""
        answered = []
        for checkpoint_id, (owner, preview) in list(self._previews.items()):
            if owner != session or checkpoint_id not in self._previews:
                continue
            rule = await self.rules.answer(session, preview)
            if rule is not None:
                await self._by_rule(checkpoint_id, session, rule)
                answered.append(checkpoint_id)
        return answered

    async def _agrees_with_own_rule(
        self, step: checkpoint_state.TooLate, approve: bool, by: bytes
    ) -> bool:
        """A decision that arrives after a rule set by the same device gave the same
        answer (``approve --for-session``: the rule answered the checkpoint at hand)."""
        checkpoint = step.checkpoint
        if checkpoint.decided_by != by or checkpoint.state is not (
            CheckpointState.APPROVED if approve else CheckpointState.DENIED
        ):
            return False
        rows = await self.log.execute_read(
            "SELECT signature FROM checkpoints WHERE id = ?", (checkpoint.id,)
        )
        return bool(rows) and not rows[0][0]  # a rule's decision carries no signature

    async def _by_rule(self, checkpoint_id: str, session: str, rule: Rule) -> None:
        """Answer the checkpoint as ``rule`` says, audited as the rule's."""
        approve = rule.effect is Effect.ALLOW
        verb = "allowed" if approve else "denied"
        name = await self.device_name(rule.set_by) if self.device_name else None
        device = f"{name} ({fingerprint(rule.set_by)})" if name else fingerprint(rule.set_by)
        reason = f"{verb} by rule {rule.id} {rule.pattern} set by {device}"
        now = self.clock()
        step = await self._answer(
            checkpoint_id,
            Answer.APPROVE if approve else Answer.DENY,
            by=rule.set_by,
            reason=reason,
            decided_at=now,
            signature=b"",
        )
        if not isinstance(step, checkpoint_state.Decide):
            return  # decided meanwhile (a person's answer or the expiry came first)
        verdict = step.verdict.value
        await self.store.audit(
            f"checkpoint.{verdict}",
            actor=rule.set_by,
            detail=f"checkpoint {checkpoint_id} of session {session}: {reason}",
            now=now,
        )
        outcome = CheckpointOutcome(checkpoint_id, verdict, reason, fingerprint(rule.set_by))
        self._resolve(checkpoint_id, outcome)

    async def _verify(self, decision: DecideCheckpoint, controller_key: bytes) -> None:
        if self.is_device is not None:
            known = await self.is_device(controller_key)
        else:
            known = controller_key in {c.key for c in await self.store.controllers()}
        try:
            if not known:
                raise CryptoError()
            verify_signature(
                controller_key,
                decision_transcript(
                    self.machine_key,
                    decision.checkpoint,
                    decision.approve,
                    decision.reason,
                    decision.decided_at,
                ),
                decision.signature,
            )
        except CryptoError as exc:
            await self.store.audit(
                "decision.rejected",
                actor=controller_key,
                detail=f"checkpoint {decision.checkpoint}: bad signature",
                now=self.clock(),
            )
            raise UsageError(
                "the decision's signature does not verify against a paired controller; refused"
            ) from exc

    async def expire(self, checkpoint_id: str) -> None:
        """The checkpoint's time is up: its default applies, unless it was decided."""
        step = await self._answer(
            checkpoint_id, Answer.EXPIRE, by=b"", reason="", decided_at=self.clock(), signature=b""
        )
        if isinstance(step, checkpoint_state.Decide):
            reason = step.reason_on_expiry
            self._resolve(checkpoint_id, CheckpointOutcome(checkpoint_id, "expired", reason, ""))

    async def _answer(
        self,
        checkpoint_id: str,
        answer: Answer,
        *,
        by: bytes,
        reason: str,
        decided_at: float,
        signature: bytes,
        command_id: str | None = None,
    ) -> checkpoint_state.Decide | checkpoint_state.TooLate | None:
        """Feed one answer through the core; write it only if it still wins when written.

        The row read here may be stale by the time the write lands (the other side
        of a decision/expiry race read it too): the write is guarded by "still
        pending", and a lost guard means re-reading, which shows who won.
        """
        for _ in range(2):  # a lost guard is answered by the second read
            checkpoint = await self._load(checkpoint_id)
            if checkpoint is None:
                return None
            step = checkpoint_state.answer(checkpoint, answer)
            if isinstance(step, checkpoint_state.TooLate):
                return step
            if step.verdict is CheckpointState.EXPIRED:
                reason = step.reason_on_expiry
            command = (
                None
                if command_id is None
                else command_record(command_id, True, "", "", step.verdict.value, self.clock())
            )
            try:
                await self._record(step, by, reason, decided_at, signature, command)
            except GuardFailed:
                continue
            return step
        raise EventLogError(f"checkpoint {checkpoint_id}: pending, yet its guarded write failed")

    async def _load(self, checkpoint_id: str) -> Checkpoint | None:
        rows = await self.log.execute_read(
            "SELECT session, decision, default_approve, decided_by, decided_at "
            "FROM checkpoints WHERE id = ?",
            (checkpoint_id,),
        )
        if not rows:
            return None
        session, decision, default_approve, by, at = rows[0]
        return Checkpoint.from_decision(
            checkpoint_id, session, decision, default_approve, bytes(by) if by else b"", at
        )

    async def _record(
        self,
        step: checkpoint_state.Decide,
        by: bytes,
        reason: str,
        decided_at: float,
        signature: bytes,
        command: Statement | None,
    ) -> None:
        """Write the decision and its event in one transaction, or raise GuardFailed."""
        checkpoint, verdict = step.checkpoint, step.verdict.value
        guard: Statement = (
            "UPDATE checkpoints SET decision = ?, decided_by = ?, reason = ?, decided_at = ?, "
            "signature = ? WHERE id = ? AND decision IS NULL",
            (verdict, by, reason, decided_at, signature, checkpoint.id),
        )
        decided = CheckpointDecided(checkpoint.id, Verdict(verdict), by, reason, decided_at)
        await self.log.append(
            checkpoint.session,
            APP.encode(decided),
            at=self.clock(),
            also=[command] if command is not None else [],
            guard=guard,
        )
        async with self._status:
            live = self.sessions.sessions.get(checkpoint.session)
            if (
                live is not None
                and not await self._pending(checkpoint.session)
                and live.status is Status.WAITING_APPROVAL
            ):
                await self.sessions.transition(
                    live, Status.RUNNING, None, f"{checkpoint.id} {verdict}"
                )

    async def _pending(self, session: str) -> bool:
        rows = await self.log.execute_read(
            "SELECT 1 FROM checkpoints WHERE session = ? AND decision IS NULL", (session,)
        )
        return bool(rows)

    def _resolve(self, checkpoint_id: str, outcome: CheckpointOutcome) -> None:
        self._previews.pop(checkpoint_id, None)
        timer = self._timers.pop(checkpoint_id, None)
        if timer is not None:
            timer.cancel()
        waiter = self._waiters.pop(checkpoint_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    async def _outcome(self, checkpoint_id: str) -> CheckpointOutcome:
        rows = await self.log.execute_read(
            "SELECT decision, reason, decided_by FROM checkpoints WHERE id = ?", (checkpoint_id,)
        )
        decision, reason, by = rows[0]
        return CheckpointOutcome(
            checkpoint_id, decision, reason or "", fingerprint(bytes(by)) if by else ""
        )

    async def expire_stale(self) -> None:
        """After a restart: checkpoints of sessions that are gone can never be answered."""
        rows = await self.log.execute_read(
            "SELECT c.id FROM checkpoints c JOIN sessions s ON s.id = c.session "
            "WHERE c.decision IS NULL AND s.status IN ('lost', 'failed', 'cancelled', "
            "'succeeded')",
            (),
        )
        for (checkpoint_id,) in rows:
            with contextlib.suppress(Exception):
                await self.expire(checkpoint_id)
