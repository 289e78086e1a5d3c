"""Checkpoints: an agent asks, a controller decides (signed), first answer wins.

Invariants:
- A checkpoint is in the durable log (``CheckpointRaised``) before anyone can see
  it, and its decision (``CheckpointDecided``) is written with the checkpoint row
  and the command record in one transaction: a decision is applied at most once.
- The first decision wins; a later one (or one after expiry) is answered "too late"
  naming what happened first.
- A decision counts only with a valid signature by a paired controller; anything
  else is refused and written to the audit log.
- On expiry the checkpoint's default applies (deny unless set).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence

from starmux.decisions import decision_transcript
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

from .eventlog import EventLog
from .sessions import SessionManager, command_record
from .store import DaemonStore


class TooLate(UsageError):
    pass


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
    ) -> CheckpointOutcome:
        live = self.sessions.live(session)
        checkpoint_id = self._by_key.get((session, key)) if key else None
        if checkpoint_id is None:
            checkpoint_id = "c-" + secrets.token_hex(5)
            now = self.clock()
            raised = CheckpointRaised(checkpoint_id, title, body, now + timeout, default_approve)
            if live.status is Status.RUNNING:
                await self.sessions.transition(live, Status.WAITING_APPROVAL, None, title)
            await self.log.append(
                session,
                APP.encode(raised),
                at=now,
                also=[
                    (
                        "INSERT INTO checkpoints (id, session, title, body, created_at, "
                        "expires_at, default_approve) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            checkpoint_id,
                            session,
                            title,
                            body,
                            now,
                            now + timeout,
                            int(default_approve),
                        ),
                    )
                ],
            )
            self._waiters[checkpoint_id] = asyncio.get_running_loop().create_future()
            self._timers[checkpoint_id] = asyncio.get_running_loop().call_later(
                timeout, lambda: asyncio.ensure_future(self._expire(checkpoint_id))
            )
            if key:
                self._by_key[(session, key)] = checkpoint_id
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
        paired = {c.key for c in await self.store.controllers()}
        try:
            if controller_key not in paired:
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
        rows = await self.log.execute_read(
            "SELECT session, decision, decided_by, decided_at FROM checkpoints WHERE id = ?",
            (decision.checkpoint,),
        )
        if not rows:
            raise UsageError(f"no checkpoint {decision.checkpoint} on this machine")
        session, previous, by, when = rows[0]
        if previous is not None:
            who = fingerprint(bytes(by)) if by else "its default on expiry"
            raise TooLate(
                f"too late: checkpoint {decision.checkpoint} was already {previous} "
                f"by {who} at {time.strftime('%H:%M:%S', time.localtime(when))}"
            )
        verdict = "approved" if decision.approve else "denied"
        await self._record(
            session,
            decision.checkpoint,
            verdict,
            controller_key,
            decision.reason,
            decision.decided_at,
            decision.signature,
            command=command_record(command_id, True, "", "", verdict, self.clock()),
        )
        await self.store.audit(
            f"checkpoint.{verdict}",
            actor=controller_key,
            detail=f"checkpoint {decision.checkpoint} of session {session}",
            now=self.clock(),
        )
        self._resolve(
            decision.checkpoint,
            CheckpointOutcome(
                decision.checkpoint, verdict, decision.reason, fingerprint(controller_key)
            ),
        )
        return verdict

    async def _expire(self, checkpoint_id: str) -> None:
        rows = await self.log.execute_read(
            "SELECT session, decision, default_approve FROM checkpoints WHERE id = ?",
            (checkpoint_id,),
        )
        if not rows or rows[0][1] is not None:
            return
        session, _, default_approve = rows[0]
        reason = f"expired; default applied: {'approve' if default_approve else 'deny'}"
        await self._record(session, checkpoint_id, "expired", b"", reason, self.clock(), b"")
        self._resolve(checkpoint_id, CheckpointOutcome(checkpoint_id, "expired", reason, ""))

    async def _record(
        self,
        session: str,
        checkpoint_id: str,
        verdict: str,
        by: bytes,
        reason: str,
        decided_at: float,
        signature: bytes,
        command: tuple[str, Sequence[object]] | None = None,
    ) -> None:
        also: list[tuple[str, Sequence[object]]] = [
            (
                "UPDATE checkpoints SET decision = ?, decided_by = ?, reason = ?, decided_at = ?, "
                "signature = ? WHERE id = ? AND decision IS NULL",
                (verdict, by, reason, decided_at, signature, checkpoint_id),
            )
        ]
        if command is not None:
            also.append(command)
        decided = CheckpointDecided(checkpoint_id, verdict, by, reason, decided_at)
        await self.log.append(session, APP.encode(decided), at=self.clock(), also=also)
        live = self.sessions.sessions.get(session)
        if (
            live is not None
            and live.status is Status.WAITING_APPROVAL
            and not await self._pending(session)
        ):
            await self.sessions.transition(live, Status.RUNNING, None, f"{checkpoint_id} {verdict}")

    async def _pending(self, session: str) -> bool:
        rows = await self.log.execute_read(
            "SELECT 1 FROM checkpoints WHERE session = ? AND decision IS NULL", (session,)
        )
        return bool(rows)

    def _resolve(self, checkpoint_id: str, outcome: CheckpointOutcome) -> None:
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
                await self._expire(checkpoint_id)
