"""How a notification is worded, checked and paced on its way out (sans-I/O).

- :func:`render`: the words for a :class:`~starmux.notify_rules.ContentLevel`.
  ``none`` (the webhook default) says only "starmux: a checkpoint is waiting" or
  "starmux: a session finished": no title, command, cwd or machine name reaches a
  third-party service unless the person opted in with ``--content full``.
- :func:`webhook_request`: an ntfy-compatible POST (the text is the body, the title
  goes in the ``Title`` header), for any service that takes a plain POST.
- :func:`check_webhook_url`: http or https, a host, printable, bounded.
- :class:`RateBudget`: a token bucket per target (the clock is a parameter).
- :func:`retry_delay`: capped exponential backoff for a failing webhook.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from .errors import UsageError
from .notify_rules import ContentLevel, Notification, NotifyKind

MAX_URL = 2048
#: text limits for full content: a notification is a glance, not a log
MAX_TITLE = 120
MAX_TEXT = 600

_CONTENT_FREE = {
    NotifyKind.CHECKPOINT: "starmux: a checkpoint is waiting",
    NotifyKind.REMINDER: "starmux: a checkpoint is still waiting",
    NotifyKind.SUCCEEDED: "starmux: a session finished",
    NotifyKind.FAILED: "starmux: a session finished",
    NotifyKind.LOST: "starmux: a session finished",
    NotifyKind.TEST: "starmux: test notification",
}
_ENDINGS = {
    NotifyKind.SUCCEEDED: "succeeded",
    NotifyKind.FAILED: "failed",
    NotifyKind.LOST: "was lost",
}


@dataclass(frozen=True)
class Rendered:
    title: str  # empty with content ``none``
    text: str
    tags: str  # ntfy tags (emoji short names): content-free by construction


def _clip(text: str, limit: int) -> str:
    text = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(notification: Notification, level: ContentLevel) -> Rendered:
    kind = notification.kind
    tags = "bell" if kind in (NotifyKind.CHECKPOINT, NotifyKind.REMINDER) else "checkered_flag"
    if level is ContentLevel.NONE:
        return Rendered("", _CONTENT_FREE[kind], tags)
    machine = notification.machine or "a machine"
    session = notification.session_title or notification.session
    if kind in (NotifyKind.CHECKPOINT, NotifyKind.REMINDER):
        title = f"{machine}: {notification.title}"
        lines = [f"session: {session}"] if session else []
        if notification.body:
            lines.append(notification.body)
        if notification.cwd:
            lines.append(f"cwd: {notification.cwd}")
        if kind is NotifyKind.REMINDER:
            lines.insert(0, "still waiting, about to expire")
    elif kind is NotifyKind.TEST:
        title, lines = f"{machine}: starmux test", ["notifications reach this target"]
    else:
        title = f"{machine}: {session} {_ENDINGS[kind]}"
        lines = [f"cwd: {notification.cwd}"] if notification.cwd else []
    return Rendered(_clip(title, MAX_TITLE), _clip("\n".join(lines), MAX_TEXT), tags)


def webhook_request(
    notification: Notification, level: ContentLevel
) -> tuple[dict[str, str], bytes]:
    """Headers and body of the POST (ntfy reads ``Title``, ``Tags``, ``Priority``)."""
    rendered = render(notification, level)
    headers = {"Content-Type": "text/plain; charset=utf-8", "Tags": rendered.tags}
    if rendered.title:
        # HTTP header values are latin-1: ntfy accepts RFC 2047 for anything else.
        headers["Title"] = _header_value(rendered.title)
    if notification.kind in (NotifyKind.CHECKPOINT, NotifyKind.REMINDER):
        headers["Priority"] = "high"
    return headers, rendered.text.encode()


def _header_value(text: str) -> str:
    flat = text.replace("\r", " ").replace("\n", " ")
    try:
        flat.encode("latin-1")
    except UnicodeEncodeError:
        import base64

        return "=?UTF-8?B?" + base64.b64encode(flat.encode()).decode() + "?="
    return flat


def check_webhook_url(url: str) -> str:
    """The URL if a webhook may use it, else :class:`UsageError` saying why."""
    hint = "give a full http:// or https:// URL, e.g. https://ntfy.sh/my-secret-topic"
    if not url or len(url) > MAX_URL:
        raise UsageError(f"a webhook URL has 1 to {MAX_URL} characters", hint=hint)
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise UsageError("a webhook URL has no spaces or control characters", hint=hint)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"not a URL: {exc}", hint=hint) from exc
    if parts.scheme not in ("http", "https"):
        scheme = parts.scheme or "none"
        raise UsageError(
            f"a webhook URL must be http or https, not {scheme!r}",
            hint=hint,
        )
    if not parts.hostname:
        raise UsageError("the webhook URL has no host", hint=hint)
    if port == 0:
        raise UsageError("the webhook URL's port is 0", hint=hint)
    return url


def describe_url(url: str) -> str:
    """What ``notify list`` shows: scheme, host and path, never a password or query."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class RateBudget:
    """A token bucket per key: ``burst`` at once, then ``per_minute``."""

    def __init__(self, *, per_minute: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key] = (tokens - 1.0, now)
        return True


#: webhook retries: 0.5 s, 1 s, 2 s, 4 s, 8 s, then the notification is given up
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


def retry_delay(failures: int) -> float | None:
    """Seconds before try ``failures + 1``, or None: give this notification up."""
    if failures < 1 or failures > len(RETRY_DELAYS):
        return None
    return RETRY_DELAYS[failures - 1]


def retryable_status(status: int) -> bool:
    """Worth another try: the server's trouble (5xx), throttling (429) or a timeout (408)."""
    return status >= 500 or status in (408, 425, 429)
