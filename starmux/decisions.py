"""Signed checkpoint decisions: what a controller signs when it approves or denies.

The daemon verifies the signature against a paired controller's key before acting
and keeps it in its audit log, so "who approved what, when" is provable later.
"""

from __future__ import annotations

import enum

from .transcript import signed_time, transcript

DECISION_DOMAIN = b"starmux/checkpoint-decision/v1"


class Verdict(enum.StrEnum):
    """How a checkpoint ended: what ``CheckpointDecided`` carries and the audit log keeps."""

    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"  # nobody answered in time: the checkpoint's default applied


def decision_transcript(
    machine_key: bytes, checkpoint: str, approve: bool, reason: str, decided_at: float
) -> bytes:
    return transcript(
        DECISION_DOMAIN,
        machine_key,
        checkpoint.encode(),
        b"approve" if approve else b"deny",
        reason.encode(),
        signed_time(decided_at),
    )
