"""``STARMUX_WEBHOOK_RETRY_SCALE`` (daemon/webhooks.py): only ever shortens the retry
schedule, and a bad value stops the daemon with a hint instead of being guessed at."""

from __future__ import annotations

import pytest

from starmux.daemon.webhooks import RETRY_SCALE_ENV, retry_scale
from starmux.errors import ConfigError


@pytest.mark.parametrize(("text", "scale"), [("", 1.0), ("0.4", 0.4), ("1", 1.0), ("1e-3", 0.001)])
def test_accepted(text: str, scale: float) -> None:
    assert retry_scale({RETRY_SCALE_ENV: text}) == scale
    assert retry_scale({}) == 1.0


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "2", "abc", "0." + "1" * 40])
def test_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=RETRY_SCALE_ENV) as caught:
        retry_scale({RETRY_SCALE_ENV: text})
    assert caught.value.hint
