"""Who is told what, and when: the notification rules of a machine (sans-I/O).

The daemon feeds every event it logs into a :class:`Planner` and gets back
:class:`Delivery` values (a notification for one target); it asks :meth:`Planner.due`
at :meth:`Planner.next_due` for reminders. Sending, retrying and the clock belong to
the daemon (``daemon/notifications.py``); this module only decides.

Invariants:

- A checkpoint notifies each target at most once when raised and once as a reminder;
  the reminder is at ``raised + fraction × (expires − raised)`` with the fraction of
  the target's device, and never after someone decided: a decision (or the expiry)
  forgets the checkpoint and every reminder of it.
- A session end notifies once: terminal statuses never change
  (:mod:`starmux.session_state`), so a session is told about and forgotten at its
  first terminal status (a cancelled one is only forgotten: the person asked).
- A device that said it is looking at a session right now (:meth:`Planner.viewing`)
  is not told about that session until the time it gave.
- A device's settings choose the kinds it wants; a kind it turned off is never sent.
- What a target receives depends on its :class:`ContentLevel`: ``none`` carries no
  title, command, cwd or machine name (see :func:`render`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from .errors import UsageError
from .session_state import TERMINAL, Status


class NotifyKind(enum.StrEnum):
    CHECKPOINT = "checkpoint"  # a checkpoint was raised
    REMINDER = "reminder"  # a checkpoint is about to expire, nobody decided yet
    SUCCEEDED = "session-succeeded"
    FAILED = "session-failed"
    LOST = "session-lost"
    TEST = "test"  # `starmux notify test`: always sent


ALL_KINDS = frozenset(kind for kind in NotifyKind if kind is not NotifyKind.TEST)


class ContentLevel(enum.StrEnum):
    NONE = "none"  # "starmux: a checkpoint is waiting", nothing more
    FULL = "full"  # machine, session and checkpoint title, the checkpoint's body


class TargetKind(enum.StrEnum):
    WEBHOOK = "webhook"  # an ntfy-compatible URL the daemon POSTs to
    PUSH = "push"  # Web Push through the relay, sealed to the device's key


#: the fraction of a checkpoint's timeout after which the reminder goes out
DEFAULT_REMINDER_FRACTION = 0.75
#: no reminder for a checkpoint whose reminder would come sooner than this after it
MIN_REMINDER_DELAY = 1.0


@dataclass(frozen=True)
class DeviceSettings:
    """What one device wants from one machine (stored on the machine, per device)."""

    kinds: frozenset[NotifyKind] = ALL_KINDS
    reminder_fraction: float = DEFAULT_REMINDER_FRACTION

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reminder_fraction) and 0 < self.reminder_fraction < 1):
            raise UsageError(
                "the reminder fraction must lie between 0 and 1 (e.g. 0.75)",
                hint="0.75 reminds when three quarters of the checkpoint's timeout passed",
            )


@dataclass(frozen=True)
class Target:
    """Where one device is told: ``id`` is the device's own name for it."""

    id: str
    device: bytes
    kind: TargetKind
    content: ContentLevel
    url: str = field(default="", repr=False)  # a webhook's URL may be a capability


@dataclass(frozen=True)
class Notification:
    kind: NotifyKind
    at: float
    machine: str = ""
    session: str = ""
    session_title: str = ""
    checkpoint: str = ""
    title: str = ""  # the checkpoint's title
    body: str = ""  # the checkpoint's body (the command it would run)
    cwd: str = ""
    expires_at: float | None = None


@dataclass(frozen=True)
class Delivery:
    target: Target
    notification: Notification


@dataclass
class _Pending:
    notification: Notification
    #: device → when its reminder is due (removed once sent)
    reminders: dict[bytes, float]


@dataclass
class _Session:
    title: str = ""
    cwd: str = ""


class Planner:
    """The machine's notification rules; one per daemon."""

    def __init__(self, *, machine: str) -> None:
        self.machine = machine
        self._targets: dict[tuple[bytes, str], Target] = {}
        self._settings: dict[bytes, DeviceSettings] = {}
        self._sessions: dict[str, _Session] = {}
        self._pending: dict[str, _Pending] = {}
        self._viewing: dict[bytes, tuple[str, float]] = {}

    # --- configuration ------------------------------------------------------------

    def set_target(self, target: Target) -> None:
        self._targets[(target.device, target.id)] = target

    def remove_target(self, device: bytes, target_id: str) -> bool:
        return self._targets.pop((device, target_id), None) is not None

    def targets(self, device: bytes | None = None) -> list[Target]:
        return [t for t in self._targets.values() if device is None or t.device == device]

    def set_settings(self, device: bytes, settings: DeviceSettings) -> None:
        self._settings[device] = settings

    def settings(self, device: bytes) -> DeviceSettings:
        return self._settings.get(device, DeviceSettings())

    def viewing(self, device: bytes, session: str, until: float) -> None:
        """``device`` shows ``session`` in the foreground until ``until`` (or stopped)."""
        if session:
            self._viewing[device] = (session, until)
        else:
            self._viewing.pop(device, None)

    # --- events ---------------------------------------------------------------------

    def session_created(self, session: str, *, title: str, cwd: str) -> None:
        self._sessions[session] = _Session(title, cwd)

    def checkpoint_raised(
        self,
        session: str,
        checkpoint: str,
        *,
        title: str,
        body: str,
        at: float,
        expires_at: float,
        announce: bool = True,
    ) -> list[Delivery]:
        """A new checkpoint: told now (unless ``announce`` is False: a daemon restart
        that only restores the reminders of checkpoints it told about before)."""
        if checkpoint in self._pending:
            return []
        info = self._sessions.get(session, _Session())
        notification = Notification(
            NotifyKind.CHECKPOINT,
            at,
            self.machine,
            session,
            info.title,
            checkpoint,
            title,
            body,
            info.cwd,
            expires_at,
        )
        reminders = {}
        for device in {t.device for t in self._targets.values()}:
            fraction = self.settings(device).reminder_fraction
            due = at + fraction * (expires_at - at)
            if due - at >= MIN_REMINDER_DELAY and due < expires_at:
                reminders[device] = due
        self._pending[checkpoint] = _Pending(notification, reminders)
        return self._fan_out(notification, at) if announce else []

    def checkpoint_decided(self, checkpoint: str) -> None:
        """Someone decided (or it expired): no reminder of it, ever."""
        self._pending.pop(checkpoint, None)

    def session_ended(self, session: str, status: str, *, at: float) -> list[Delivery]:
        """A session's status changed; its first terminal status is told (terminal
        statuses never change, so the session is forgotten then: memory stays
        bounded by the sessions that run)."""
        if status not in _TERMINAL:
            return []
        info = self._sessions.pop(session, _Session())
        for checkpoint in [
            c for c, p in self._pending.items() if p.notification.session == session
        ]:
            del self._pending[checkpoint]  # an ended session decides nothing more
        kind = _END_KINDS.get(status)
        if kind is None:  # cancelled: the person asked for it, no need to tell them
            return []
        notification = Notification(
            kind, at, self.machine, session, info.title, cwd=info.cwd, expires_at=None
        )
        return self._fan_out(notification, at)

    def test(self, device: bytes, target_id: str, *, at: float) -> list[Delivery]:
        """``starmux notify test``: one notification to the device's targets (or one)."""
        notification = Notification(NotifyKind.TEST, at, self.machine, title="starmux test")
        return [
            Delivery(t, notification)
            for t in self.targets(device)
            if not target_id or t.id == target_id
        ]

    # --- reminders ------------------------------------------------------------------

    def next_due(self) -> float | None:
        times = [at for p in self._pending.values() for at in p.reminders.values()]
        return min(times) if times else None

    def due(self, now: float) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for pending in list(self._pending.values()):
            for device, at in list(pending.reminders.items()):
                if at > now:
                    continue
                del pending.reminders[device]
                reminder = replace(pending.notification, kind=NotifyKind.REMINDER, at=now)
                deliveries.extend(self._fan_out(reminder, now, only=device))
        return deliveries

    # --- who gets it ----------------------------------------------------------------

    def _fan_out(
        self, notification: Notification, now: float, *, only: bytes | None = None
    ) -> list[Delivery]:
        out = []
        for target in self._targets.values():
            if only is not None and target.device != only:
                continue
            if notification.kind not in self.settings(target.device).kinds:
                continue
            if self._is_looking(target.device, notification.session, now):
                continue
            out.append(Delivery(target, notification))
        return out

    def _is_looking(self, device: bytes, session: str, now: float) -> bool:
        looking = self._viewing.get(device)
        if looking is None:
            return False
        if looking[1] <= now:
            del self._viewing[device]
            return False
        return bool(session) and looking[0] == session


_TERMINAL = frozenset(status.value for status in TERMINAL)
_END_KINDS = {
    Status.SUCCEEDED.value: NotifyKind.SUCCEEDED,
    Status.FAILED.value: NotifyKind.FAILED,
    Status.LOST.value: NotifyKind.LOST,
}
