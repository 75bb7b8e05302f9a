"""Marker names, their help lines, and the validation of their arguments."""

from __future__ import annotations

import functools
from typing import NamedTuple

import pytest

from pytest_djasync.config import parse_block_ms

BLOCK_MS = "djasync_block_ms"
ALLOW_BLOCKING = "djasync_allow_blocking"
MAX_CROSSINGS = "djasync_max_crossings"
FANOUT = "djasync_fanout"

_HELP = {
    BLOCK_MS: "djasync_block_ms(ms): loop-stall threshold for this test, in milliseconds",
    ALLOW_BLOCKING: "djasync_allow_blocking(reason=...): accept loop blocking in this test",
    MAX_CROSSINGS: "djasync_max_crossings(n): fail if the test makes more than n sync/async hops",
    FANOUT: "djasync_fanout(n, within=None): fail unless n outbound requests were in flight"
    " together (and, with within=x, the fan-out took at most x times its slowest call)",
}


def register(config: pytest.Config) -> None:
    for line in _HELP.values():
        config.addinivalue_line("markers", line)


def block_ms(item: pytest.Item, default: float) -> float:
    marker = item.get_closest_marker(BLOCK_MS)
    if marker is None:
        return default
    if len(marker.args) != 1 or marker.kwargs or isinstance(marker.args[0], bool):
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
    given = len(marker.args) + len(marker.kwargs)
    if not isinstance(reason, str) or set(marker.kwargs) - {"reason"} or given > 1:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{ALLOW_BLOCKING} takes one reason string,"
            f" e.g. @pytest.mark.{ALLOW_BLOCKING}(reason='legacy client, tracked in #12');"
            f" got args={marker.args} kwargs={marker.kwargs}"
        )
    return reason or "no reason given"


def max_crossings(item: pytest.Item) -> int | None:
    """The crossing budget of a test, or ``None`` when it has none."""
    marker = item.get_closest_marker(MAX_CROSSINGS)
    if marker is None:
        return None
    limit = marker.args[0] if len(marker.args) == 1 and not marker.kwargs else None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{MAX_CROSSINGS} takes one whole number >= 0,"
            f" e.g. @pytest.mark.{MAX_CROSSINGS}(4); got args={marker.args} kwargs={marker.kwargs}"
        )
    return limit


def fanout(item: pytest.Item) -> tuple[int, float | None] | None:
    """The fan-out a test must show, as (at least n together, within factor), or ``None``."""
    marker = item.get_closest_marker(FANOUT)
    if marker is None:
        return None
    usage = (
        f"{item.nodeid}: @pytest.mark.{FANOUT} takes a whole number >= 1 and optionally"
        f" within=<factor >= 1>, e.g. @pytest.mark.{FANOUT}(3, within=1.5);"
        f" got args={marker.args} kwargs={marker.kwargs}"
    )
    from pytest_djasync.fanout import expectation_problem  # httpx: only for a marked test

    within = marker.kwargs.get("within")
    at_least = marker.args[0] if len(marker.args) == 1 else None
    wrong = expectation_problem(at_least, within)
    if set(marker.kwargs) - {"within"} or wrong is not None:
        raise pytest.UsageError(usage if wrong is None else f"{usage} ({wrong})")
    assert isinstance(at_least, int)
    return at_least, None if within is None else float(within)


class Plan(NamedTuple):
    """Everything a test's markers ask of the plugin, read once per test."""

    block_ms: float
    block_marked: bool
    allow_reason: str | None
    max_crossings: int | None
    fanout: tuple[int, float | None] | None
    django_db: bool = False  # pytest-django's marker, seen in the same walk over the markers

    @property
    def asks_for_watching(self) -> bool:
        """True when the markers make the test watched even in a run without ``--djasync``."""
        return self.block_marked or self.max_crossings is not None or self.fanout is not None


_PLAN_KEY = pytest.StashKey[Plan]()
_ERROR_KEY = pytest.StashKey[str]()
_OURS = frozenset(_HELP)


def plan_all(config: pytest.Config, items: list[pytest.Item], default_block_ms: float) -> bool:
    """Read every test's plan; True when some test's markers ask for watching. A bad marker
    argument is a usage error, except in a pytest-xdist worker (see ``_SetupErrors``)."""
    marked = False
    errors = []
    for item in items:
        try:
            marked |= plan(item, default_block_ms).asks_for_watching
        except pytest.UsageError as exc:
            errors.append(str(exc))
            item.stash[_PLAN_KEY] = _unmarked(default_block_ms, False)
            item.stash[_ERROR_KEY] = str(exc)
    if errors and not hasattr(config, "workerinput"):
        raise pytest.UsageError("\n".join(errors))  # every bad marker at once, not the first
    if errors and not config.pluginmanager.has_plugin(_SETUP_ERRORS):
        config.pluginmanager.register(_SetupErrors(), _SETUP_ERRORS)
    return marked


_SETUP_ERRORS = "djasync-marker-errors"


class _SetupErrors:
    """A usage error raised in a pytest-xdist worker crashes the whole run with an internal
    error that hides the message; there, each test with a bad marker errors at set-up with it."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        message = item.stash.get(_ERROR_KEY, None)
        if message is not None:
            pytest.fail(message, pytrace=False)


def plan(item: pytest.Item, default_block_ms: float) -> Plan:
    """The test's plan, validated on first use (at collection) and kept on the item."""
    known = item.stash.get(_PLAN_KEY, None)
    if known is None:
        known = _read(item, default_block_ms)
        item.stash[_PLAN_KEY] = known
    return known


def _read(item: pytest.Item, default_block_ms: float) -> Plan:
    # One walk over the markers: most tests carry none of ours and share one plan.
    names = {marker.name for marker in item.iter_markers()}
    django_db = _DJANGO_DB in names
    if names.isdisjoint(_OURS):
        return _unmarked(default_block_ms, django_db)
    return Plan(
        block_ms=block_ms(item, default_block_ms),
        block_marked=item.get_closest_marker(BLOCK_MS) is not None,
        allow_reason=allow_blocking_reason(item),
        max_crossings=max_crossings(item),
        fanout=fanout(item),
        django_db=django_db,
    )


_DJANGO_DB = "django_db"


@functools.lru_cache(maxsize=8)
def _unmarked(default_block_ms: float, django_db: bool) -> Plan:
    return Plan(default_block_ms, False, None, None, None, django_db)
