"""Marker names, their help lines, and the validation of their arguments."""

from __future__ import annotations

import pytest

from pytest_djasync.config import parse_block_ms

BLOCK_MS = "djasync_block_ms"
ALLOW_BLOCKING = "djasync_allow_blocking"

_HELP = {
    BLOCK_MS: "djasync_block_ms(ms): loop-stall threshold for this test, in milliseconds",
    ALLOW_BLOCKING: "djasync_allow_blocking(reason=...): accept loop blocking in this test",
}


def register(config: pytest.Config) -> None:
    for line in _HELP.values():
        config.addinivalue_line("markers", line)


def block_ms(item: pytest.Item, default: float) -> float:
    marker = item.get_closest_marker(BLOCK_MS)
    if marker is None:
        return default
    if len(marker.args) != 1 or marker.kwargs:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{BLOCK_MS} takes one number of milliseconds,"
            f" e.g. @pytest.mark.{BLOCK_MS}(250); got args={marker.args} kwargs={marker.kwargs}"
        )
    try:
        return parse_block_ms(marker.args[0])
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{BLOCK_MS}: {exc}") from None


def allow_blocking_reason(item: pytest.Item) -> str | None:
    """The reason a test may block the loop, or ``None`` when it may not."""
    marker = item.get_closest_marker(ALLOW_BLOCKING)
    if marker is None:
        return None
    reason = marker.kwargs.get("reason", marker.args[0] if marker.args else "")
    if not isinstance(reason, str) or set(marker.kwargs) - {"reason"} or len(marker.args) > 1:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{ALLOW_BLOCKING} takes one reason string,"
            f" e.g. @pytest.mark.{ALLOW_BLOCKING}(reason='legacy client, tracked in #12')"
        )
    return reason or "no reason given"
