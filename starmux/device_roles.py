"""What each device role of an account may do: the permission table is data.

Roles (DESIGN.md section 9), enforced by the daemon (it is what executes) and by
the relay (for what the relay does itself: device management)::

    owner     everything, including the device log and machine revocation
    operator  run, input, cancel, approve, deny, rules, tag machines  (+ what a viewer may)
    viewer    list, watch, logs

:data:`PERMISSIONS` is the whole truth; :func:`allowed` only looks it up, and
:data:`COMMAND_ACTIONS` maps each application command kind to the action it needs,
so a daemon can refuse a command it has no row for instead of guessing.
"""

from __future__ import annotations

import enum

from .errors import UsageError


class DeviceRole(enum.StrEnum):
    OWNER = "owner"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Action(enum.StrEnum):
    LIST = "list"  # sessions, machines, approvals
    WATCH = "watch"  # live events
    LOGS = "logs"  # a session's output
    RUN = "run"  # start a session
    INPUT = "input"  # type into a running session
    CANCEL = "cancel"
    APPROVE = "approve"
    DENY = "deny"
    TAG_MACHINE = "tag-machine"  # change a machine's tags (placement)
    RULES = "rules"  # set and remove a session's approval rules
    MANAGE_DEVICES = "manage-devices"  # link, remove, change roles
    PAIR_MACHINE = "pair-machine"
    REVOKE_MACHINE = "revoke-machine"


_VIEWER = frozenset({Action.LIST, Action.WATCH, Action.LOGS})
_OPERATOR = _VIEWER | {
    Action.RUN,
    Action.INPUT,
    Action.CANCEL,
    Action.APPROVE,
    Action.DENY,
    Action.TAG_MACHINE,
    Action.RULES,
}

PERMISSIONS: dict[DeviceRole, frozenset[Action]] = {
    DeviceRole.VIEWER: _VIEWER,
    DeviceRole.OPERATOR: _OPERATOR,
    DeviceRole.OWNER: frozenset(Action),
}

# Application command kinds (starmux.messages) and what each needs. A decision
# needs APPROVE or DENY depending on its verdict: see action_for_decision().
COMMAND_ACTIONS: dict[str, Action] = {
    "sync-request": Action.WATCH,
    "start-session": Action.RUN,
    "send-input": Action.INPUT,
    "cancel-session": Action.CANCEL,
    # Tasks (starmux.task_messages): dispatching is running, as issue 18 says.
    "assign-task": Action.RUN,
    "cancel-task": Action.CANCEL,
    # Notifications (starmux.notify_messages): every device may be told what it may
    # watch, but a webhook target makes the machine POST to any address it can reach
    # (loopback, its LAN): only a device that may run commands there anyway may add one.
    "notify-target": Action.RUN,
    "notify-target-remove": Action.WATCH,
    "notify-settings": Action.WATCH,
    "notify-test": Action.WATCH,
    "set-tags": Action.TAG_MACHINE,
    # Review (starmux.review_messages, issue 19): a rule answers checkpoints for the
    # person who set it, so it needs an operator; the diff is read-only.
    "set-approval-rule": Action.RULES,
    "remove-approval-rule": Action.RULES,
    "show-diff": Action.LOGS,
}


def allowed(role: DeviceRole | None, action: Action) -> bool:
    """True if a device of ``role`` may do ``action``; ``None`` (not a current
    device of the account) may do nothing."""
    return role is not None and action in PERMISSIONS[role]


def action_for_decision(approve: bool) -> Action:
    return Action.APPROVE if approve else Action.DENY


def parse_role(text: str) -> DeviceRole:
    """A role typed by a person; raises :class:`~starmux.errors.UsageError`."""
    try:
        return DeviceRole(text.strip().lower())
    except ValueError:
        raise UsageError(
            f"unknown role {text[:40]!r}",
            hint="a role is one of: " + ", ".join(r.value for r in DeviceRole),
        ) from None
